"""The artifact folder and the model in it: what `pipelines train` writes, what a user's learner becomes,
and how the later stages (export, verify) get the fastai model and its evaluation data back.

An artifact folder holds `source.json`, which says where the model comes from:
- kind "trained": `pipelines train` (or a `learn.save` weights file with train's options): the task's
  resolved options and the fastai weights; the data is prepared again from the options (same seed,
  same split) and the model rebuilt without pickles.
- kind "learner": a user's `learn.export()` file, copied in as `learner.pkl` and loaded with fastai's
  `load_learner`; the user's `--sample` is the evaluation data.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from export.report import TrainingSummary, plot_losses
from pipelines.errors import PipelineError
from pipelines.registry import TASKS, get_task
from pipelines.tasks.base import WEIGHTS_FILE, BuiltLearner, PreparedData, Task
from services.messages import message_line

SOURCE_FILE = "source.json"
TRAINING_FILE = "training.json"
LEARNER_FILE = "learner.pkl"


@dataclass
class ModelSource:
    """A fastai model and the data it is checked against, with the record of where both came from."""

    task: Task
    learn: Any
    data: PreparedData
    record: dict
    folder: Path
    summary: TrainingSummary | None = None

    @property
    def pretrained_note(self) -> str | None:
        return self.record.get("pretrained")


def read_record(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / SOURCE_FILE
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such artifact folder")
    if not path.is_file():
        raise PipelineError(f"{folder} is not an artifact folder (no {SOURCE_FILE}); make one with "
                            "`pipelines train TASK` or `pipelines export --learner FILE --sample PATH`")
    return json.loads(path.read_text())


def write_record(folder: Path, record: dict) -> None:
    (Path(folder) / SOURCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def write_trained(folder: Path, task: Task, built: BuiltLearner, data: PreparedData, summary: TrainingSummary,
                  distributed: bool = False) -> None:
    """What `pipelines train` leaves: weights, resolved options, data recipe, metrics and loss curve."""
    folder = Path(folder)
    task.save_weights(built.learn, folder)
    write_record(folder, {
        "kind": "trained", "task": task.name, "options": built.options.to_dict(), "data_source": data.source,
        "data": data.summary(), "pretrained": built.pretrained_note, "distributed": distributed,
    })
    (folder / TRAINING_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    plot_losses(summary, folder / "loss_curve.png")


def training_summary(folder: Path) -> TrainingSummary | None:
    path = Path(folder) / TRAINING_FILE
    return TrainingSummary(**json.loads(path.read_text())) if path.is_file() else None


def load_model_source(folder: Path, sample: Path | None = None) -> ModelSource:
    """The fastai model of an artifact folder, with its evaluation data (`sample` replaces it)."""
    folder = Path(folder)
    record = read_record(folder)
    task = get_task(record["task"])
    if record["kind"] == "learner":
        learn = load_user_learner(folder / LEARNER_FILE)
        sample = Path(sample or record["sample"])
        return ModelSource(task, learn, task.sample_data(learn, sample), record, folder)
    options = task.Options.from_mapping(record["options"])
    click.echo(f"      rebuilding the {task.name} model from {folder / WEIGHTS_FILE} and the saved options")
    built, data = task.rebuild(options, folder / WEIGHTS_FILE)
    if sample is not None:
        data = task.sample_data(built.learn, Path(sample))
    return ModelSource(task, built.learn, data, record, folder, training_summary(folder))


# ----- a learner a user brings ----------------------------------------------------------------------
def provide_notebook_names() -> None:
    """The book's Siamese classes and functions where a notebook's pickle looks for them: `__main__`.

    Only names `__main__` lacks are added, so a user's own definitions (a script that defines them and
    then calls us) win."""
    from pipelines.tasks import siamese_book

    main = sys.modules["__main__"]
    for name in siamese_book.NOTEBOOK_NAMES:
        if not hasattr(main, name):
            setattr(main, name, getattr(siamese_book, name))


def missing_function(module: str, name: str):
    def missing(*args, **kwargs):
        raise PipelineError(f"{module}.{name} was not available when the learner was loaded; export does not need it")

    missing.__qualname__ = missing.__name__ = name
    return missing


class NotebookUnpickler(pickle.Unpickler):
    """Unpickles a learner saved from a notebook or script, whose data functions (label functions, getters)
    live in its `__main__`. Export never calls them, so a function this process lacks becomes a stand-in
    that says so if called; a missing class is still an error (the model needs its code)."""

    missing: list[str] = []

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except AttributeError:
            if module != "__main__":
                raise
            NotebookUnpickler.missing.append(f"{module}.{name}")
            return missing_function(module, name)


def notebook_pickle_module():
    """The `pickle` module with NotebookUnpickler, in the shape torch.load's `pickle_module` takes."""
    import types

    module = types.ModuleType("notebook_pickle")
    module.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    module.Unpickler = NotebookUnpickler
    return module


def module_installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def load_user_learner(path: Path):
    """What fastai's `load_learner(path, cpu=True)` does, with the failures a user meets as one line each
    (and data functions of a notebook's `__main__` stood in for: NotebookUnpickler)."""
    import warnings

    import torch
    from fastai.learner import Learner

    path = Path(path).expanduser()
    if not path.is_file():
        raise PipelineError(f"--learner {path}: no such file")
    provide_notebook_names()
    NotebookUnpickler.missing = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = torch.load(path, map_location="cpu", pickle_module=notebook_pickle_module(), weights_only=False)
    except (AttributeError, ImportError, TypeError) as error:
        lacking = f" (used as a class: {', '.join(NotebookUnpickler.missing)})" if NotebookUnpickler.missing else ""
        if isinstance(error, ImportError) and (error.name or "").split(".")[0] == "timm" and not module_installed("timm"):
            raise PipelineError(f"{path}: the learner's model is a timm model (`vision_learner(dls, 'name')`), and "
                                "timm is not installed here: pip install 'fastai-onnx-pipelines[timm]' (or timm)") from None
        raise PipelineError(
            f"{path}: the pickle refers to code this environment lacks: {message_line(error, last=True)}{lacking}. "
            "Import or define the learner's custom classes before exporting (a script that imports them and calls "
            f"pipelines.cli.main), or install the fastai/torch versions it was saved with (here fastai "
            f"{fastai_version()}, torch {torch.__version__})"
        ) from None
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as error:
        raise PipelineError(f"{path}: not a fastai learner file ({type(error).__name__}: {error})") from None
    except RuntimeError as error:
        message = message_line(error)
        if "zip" in message or "magic number" in message or "archive" in message:
            raise PipelineError(f"{path}: not a fastai learner file ({message})") from None
        raise PipelineError(f"{path}: could not be loaded with fastai {fastai_version()} and torch "
                            f"{torch.__version__} ({message})") from None
    if not isinstance(learn, Learner):
        raise PipelineError(f"{path}: not a fastai Learner (it holds a {type(learn).__module__}.{type(learn).__name__})")
    learn.dls.cpu()
    if hasattr(learn, "channels_last"):
        learn = learn.to_contiguous(to_fp32=True)
    elif hasattr(learn, "mixed_precision"):
        learn = learn.to_fp32()
    elif hasattr(learn, "non_native_mixed_precision"):
        learn = learn.to_non_native_fp32()
    return learn


def fastai_version() -> str:
    import fastai

    return fastai.__version__


def recognise_task(learn, requested: str = "auto") -> Task:
    """The task of a user's Learner: `requested`, checked, or the one whose recipe made this model."""
    model_class = f"{type(learn.model).__module__}.{type(learn.model).__name__}"
    if requested != "auto":
        task = get_task(requested)
        if not task.recognises(learn):
            raise PipelineError(f"--task {requested}: this learner's model is a {model_class}, not a {requested} model")
    else:
        matches = [name for name, task_class in TASKS.items() if task_class.recognises(learn)]
        if not matches:
            raise PipelineError(
                f"this learner's model is a {model_class}, which no task recognises; known tasks: "
                + "; ".join(f"{name} ({TASKS[name].summary})" for name in sorted(TASKS))
            )
        task = get_task(matches[0])
    refusal = task.refusal(learn)
    if refusal:
        raise PipelineError(refusal)
    return task


def import_learner(learner: Path, sample: Path, folder: Path, requested_task: str = "auto") -> ModelSource:
    """A user's `learn.export()` file as an artifact folder: the learner copied in, its task recognised,
    the sample read and checked against the learner."""
    click.echo(f"note: loading {learner} unpickles it, as fastai's load_learner does; a pickle can run code, so "
               "load only files you trust")
    learn = load_user_learner(learner)
    task = recognise_task(learn, requested_task)
    click.echo(f"      recognised a {task.name} learner ({type(learn.model).__name__})")
    data = task.sample_data(learn, Path(sample))
    shutil.copy2(learner, Path(folder) / LEARNER_FILE)
    record = {"kind": "learner", "task": task.name, "learner_file": str(Path(learner).resolve()),
              "sample": str(Path(sample).resolve()), "data_source": data.source,
              "pretrained": "brought by the user (load_learner)"}
    write_record(folder, record)
    return ModelSource(task, learn, data, record, Path(folder))


def import_weights(task: Task, weights: Path, options_file: Path, folder: Path) -> None:
    """A `learn.save` weights file with the options `pipelines train` takes (its options.json or a
    source.json) as a trained artifact folder: no pickle involved."""
    weights, options_file = Path(weights).expanduser(), Path(options_file).expanduser()
    for flag, path in (("--weights", weights), ("--options", options_file)):
        if not path.is_file():
            raise PipelineError(f"{flag} {path}: no such file")
    try:
        values = json.loads(options_file.read_text())
    except json.JSONDecodeError as error:
        raise PipelineError(f"--options {options_file}: not JSON ({error})") from None
    values = values.get("options", values)
    unknown = sorted(set(values) - {f for f in task.Options.__dataclass_fields__})
    if unknown:
        raise PipelineError(f"--options {options_file}: {', '.join(unknown)} are not {task.name} options")
    options = task.resolve(task.Options.from_mapping(values))
    shutil.copy2(weights, Path(folder) / WEIGHTS_FILE)
    write_record(folder, {"kind": "trained", "task": task.name, "options": options.to_dict(),
                          "data_source": f"weights {weights.resolve()}", "pretrained": "weights from learn.save"})
