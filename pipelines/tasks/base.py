"""The task spec: everything about one task in one place (DESIGN.md, "one task, one spec").

A task declares its options as a dataclass (`Task.Options`), from which the CLI options are generated
and which `pipelines train` writes into the artifact; its data sources and fastai recipe; how it
recognises a Learner a user brings; its ONNX config, export wrapper, parity cases and manifest
preprocessing. What every task does the same way lives here once: the preprocessing check, the
pretrained/from-scratch schedule choice, and rebuilding a trained model from an artifact.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

import click
import numpy as np

from export.config import OnnxConfig
from export.parity import ParityCase, PreprocessingCheck
from export.quantize import QuantizationGate
from export.report import TrainingSummary
from pipelines.errors import PipelineError
from pipelines.training import TrainingHistory
from services.messages import message_line

WEIGHTS_FILE = "fastai_weights.pth"


def option(default: Any, help: str, *, choices: Iterable[str] | None = None, type: Any = None,
           flag: bool = False, show_default: bool = True) -> Any:
    """A dataclass field that is also a CLI option: `--field-name`, with this help and type."""
    return field(default=default, metadata={
        "help": help, "choices": tuple(choices) if choices else None, "type": type, "flag": flag,
        "show_default": show_default and default is not None,
    })


@dataclass
class TaskOptions:
    """Options every task has; each task's `Options` subclass adds its own."""

    epochs: int | None = option(None, "Training epochs [default: the task's, printed with the schedule].",
                                type=click.IntRange(1))
    lr: float | None = option(None, "Base learning rate for fit_one_cycle [default: the task's].",
                              type=click.FloatRange(min=0, min_open=True))
    batch_size: int | None = option(None, "Batch size [default: the task's: 64, or 8 for unet as the book].",
                                    type=click.IntRange(1))
    seed: int = option(42, "Seed for splits, pairs and weights.", type=int)

    @classmethod
    def from_mapping(cls, values: dict) -> "TaskOptions":
        """The options among `values` (CLI keywords, or a saved options.json); other keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        # JSON has no tuples: options like (low, high) come back from options.json as lists
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def click_options(options_class: type[TaskOptions]) -> list[click.Option]:
    """The CLI options of a task's options dataclass: task-specific ones first, then the common ones."""
    common = {f.name for f in dataclasses.fields(TaskOptions)}
    fields = sorted(dataclasses.fields(options_class), key=lambda f: f.name in common)
    result = []
    for f in fields:
        meta = f.metadata
        name = "--" + f.name.replace("_", "-")
        kwargs = dict(default=f.default, help=meta.get("help"), show_default=meta.get("show_default", False))
        if meta.get("flag"):
            result.append(click.Option([f"{name}/--no-{name[2:]}"], **kwargs))
            continue
        if meta.get("choices"):
            kwargs["type"] = click.Choice(meta["choices"])
        elif meta.get("type") is not None:
            kwargs["type"] = meta["type"]
        result.append(click.Option([name], **kwargs))
    return result


@dataclass
class PreparedData:
    """The data a model is trained on or checked against.

    For a trained model it is the training data with its validation split; for a Learner a user brings
    it is the user's `--sample` (no training split; `targets_known` says whether labels came with it).
    """

    dls: Any
    source: str  # how a human would name the data: "digits (embedded, 1797 images)"
    details: dict = field(default_factory=dict)  # counts for people, and objects (file lists, frames) for the task

    def summary(self) -> dict:
        """The plain values of `details`, for the console and the manifest."""
        return {k: v for k, v in self.details.items() if isinstance(v, (str, int, float, bool))}


@dataclass
class BuiltLearner:
    """What `Task.build_learner` made: the Learner, whether its body starts from pretrained weights and
    why, and the options as resolved (defaults that depend on the data or on the weights filled in)."""

    learn: Any
    options: TaskOptions
    pretrained: bool = False
    pretrained_note: str = "trained from scratch"
    extras: dict = field(default_factory=dict)  # task-specific objects training needs (e.g. a language model's data)

    def with_options(self, **changes) -> "BuiltLearner":
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))


@dataclass
class PreprocessingProbe:
    """One raw input: the tensor the serving code makes from it and the one fastai makes."""

    name: str
    served: np.ndarray
    fastai: np.ndarray


def valid_data_option(help_text: str = "A second file with the same columns used as the validation set "
                                       "[default: a random 20%].") -> Any:
    """`--valid-data`: a separate validation file, for the tasks that read tables."""
    return option(None, help_text, type=click.Path(path_type=Path))


class Task(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    onnx_config: ClassVar[OnnxConfig]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    default_batch_size: ClassVar[int] = 64
    # From-scratch schedule: fit_one_cycle(scratch_epochs, scratch_lr) on all layers.
    scratch_epochs: ClassVar[int] = 5
    scratch_lr: ClassVar[float] = 1e-2
    scratch_reason: ClassVar[str] = "no pretrained weights, so the whole network trains from the start"
    # What `--sample` is for this task, for help texts and errors.
    sample_help: ClassVar[str] = ""
    # How `pipelines quantize` makes model.int8.onnx and what int8 may lose against fp32 (None: no int8).
    quantization_gate: ClassVar[QuantizationGate | None] = None
    # An image size users serve, which `pipelines bench` times besides the training size (None: no images).
    bench_size: ClassVar[tuple[int, int] | None] = None

    @classmethod
    def cli_options(cls) -> list[click.Option]:
        return click_options(cls.Options)

    def resolve(self, options: TaskOptions) -> TaskOptions:
        """Fill the defaults every task shares (the batch size)."""
        return dataclasses.replace(options, batch_size=options.batch_size or self.default_batch_size)

    # ----- data, model, training -----------------------------------------------------------------
    @abstractmethod
    def prepare_data(self, options: TaskOptions) -> PreparedData: ...

    @abstractmethod
    def build_learner(self, data: PreparedData, options: TaskOptions, pretrained: str | None = None) -> BuiltLearner:
        """The task's Learner. `pretrained` overrides the options' choice (rebuilding from saved weights
        never needs to download any)."""

    def pretrained_schedule(self, built: BuiltLearner, history: TrainingHistory) -> tuple[str, str]:
        """The book's schedule for a body that starts from pretrained weights; returns (schedule, reason)."""
        raise NotImplementedError

    def train(self, built: BuiltLearner, data: PreparedData) -> TrainingSummary:
        """The book's schedule with pretrained weights, else fit_one_cycle from scratch on all layers."""
        learn, options = built.learn, built.options
        history = TrainingHistory(learn)
        if built.pretrained:
            schedule, reason = self.pretrained_schedule(built, history)
        else:
            epochs, lr = options.epochs or self.scratch_epochs, options.lr or self.scratch_lr
            schedule, reason = f"from scratch: fit_one_cycle({epochs}, {lr:g}) on all layers", self.scratch_reason
            click.echo(f"schedule: {schedule} ({reason})")
            learn.unfreeze()
            history.fit("all layers", lambda: learn.fit_one_cycle(epochs, lr))
        return history.summary(schedule, reason)

    def rebuild(self, options: TaskOptions, weights: Path) -> tuple[BuiltLearner, PreparedData]:
        """The trained model again from its options and fastai weights (a `pipelines train` artifact, or
        `learn.save`'s file): the same data and split (same seed), the same architecture, the weights."""
        import torch
        from fastai.torch_core import set_seed

        set_seed(options.seed, reproducible=True)
        data = self.prepare_data(options)
        built = self.build_learner(data, options, pretrained="no")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # learn.save(with_opt=True) stores {"model": ..., "opt": ...}
        try:
            built.learn.model.load_state_dict(state)
        except RuntimeError as error:
            raise PipelineError(f"{weights}: these weights do not fit the {self.name} model the options "
                                f"describe ({message_line(error)})") from None
        return built, data

    def model_from_artifact(self, folder: Path):
        """The trained PyTorch model again, from an artifact folder or a registered model's folder (whose
        manifest names the artifact folder it came from), for benchmarks and notebooks."""
        from pipelines.artifact import SOURCE_FILE, load_model_source
        from services.manifest import Manifest

        folder = Path(folder)
        if not (folder / SOURCE_FILE).is_file():
            folder = Path(Manifest.read(folder).provenance["artifact_dir"])
        return load_model_source(folder).learn.model.eval().cpu()

    # ----- a Learner a user brings ---------------------------------------------------------------
    @classmethod
    @abstractmethod
    def recognises(cls, learn) -> bool:
        """Whether `learn` (from fastai's `load_learner`) is a Learner of this task."""

    def refusal(self, learn) -> str | None:
        """Why this task cannot serve what a recognised Learner predicts (e.g. several labels per input), or
        None. The model's layers alone cannot tell; the targets' transforms and the loss can."""
        return None

    @abstractmethod
    def sample_data(self, learn, sample: Path) -> PreparedData:
        """The user's `--sample` read for this Learner: raw inputs for parity and the preprocessing check."""

    # ----- export -----------------------------------------------------------------------------
    def onnx_config_for(self, learn) -> OnnxConfig:
        """The export config of this Learner: the task's, unless the Learner's model narrows it."""
        return self.onnx_config

    @abstractmethod
    def exportable_module(self, learn): ...

    def reference_module(self, learn):
        """What parity compares the ONNX graph against: the exportable module, unless it is a rewrite of
        the Learner's model (then the Learner's model itself)."""
        return self.exportable_module(learn)

    @abstractmethod
    def example_inputs(self, learn) -> tuple: ...

    @abstractmethod
    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]: ...

    @abstractmethod
    def labels(self, learn) -> list[str]: ...

    @abstractmethod
    def preprocessing(self, learn): ...

    @abstractmethod
    def preprocessing_probes(self, learn, data: PreparedData) -> Iterable[PreprocessingProbe]:
        """Raw inputs of `data`, each with the serving side's tensor and fastai's."""

    def check_preprocessing(self, learn, data: PreparedData) -> PreprocessingCheck:
        """The serving code's tensors against fastai's for the same raw inputs."""
        details, worst = [], 0.0
        for probe in self.preprocessing_probes(learn, data):
            served, expected = np.asarray(probe.served), np.asarray(probe.fastai)
            if served.shape != expected.shape:
                error = float("inf")
            else:
                error = float(np.abs(served.astype(np.float64) - expected.astype(np.float64)).max()) if served.size else 0.0
            worst = max(worst, error)
            details.append({"input": probe.name, "max_abs_error": error})
        if not details:
            raise PipelineError(f"{data.source}: no raw inputs to check the serving preprocessing against fastai's")
        return PreprocessingCheck(compared=len(details), max_abs_error=worst,
                                  passed=worst <= self.onnx_config.tolerance.preprocessing_atol, details=details)

    def bench_variants(self, learn) -> dict:
        """Other exportable forms of the model that `pipelines bench` measures beside the served graph."""
        return {}

    def bench_inputs(self, learn, case: ParityCase) -> dict[str, dict[str, np.ndarray]]:
        """The inputs `pipelines bench` times every runtime on: the evaluation data at batch 1 and 16, and
        for image models that take any size one random input at `bench_size`."""
        from export.quantize import rows_of

        inputs = {f"batch {n}": rows_of(case.inputs, n) for n in (1, 16)}
        any_size = all({2, 3} <= set(spec.dynamic_axes) for spec in self.onnx_config_for(learn).inputs)
        if self.bench_size is not None and any_size:
            height, width = self.bench_size
            rng = np.random.default_rng(0)
            inputs[f"batch 1 at {height}x{width}"] = {
                name: rng.standard_normal((1, array.shape[1], height, width), dtype=np.float32)
                for name, array in case.inputs.items()}
        return inputs

    @staticmethod
    def evaluation_case(cases: list[ParityCase]) -> ParityCase:
        """The case int8 is judged on: the largest real one (the whole validation set, or the sample)."""
        real = [case for case in cases if not case.synthetic] or cases
        labelled = [case for case in real if case.targets is not None] or real
        return max(labelled, key=lambda case: len(next(iter(case.inputs.values()))))

    def calibration_batches(self, learn, data: PreparedData, path: Path | None, count: int,
                            has_training_data: bool) -> tuple[list[dict[str, np.ndarray]], str]:
        """Model inputs for static quantization's activation ranges, and where they came from: the
        training split (never the validation data int8 is judged on), or a user's `--calibration` files
        in the `--sample` format (a learner brought without its training data)."""
        names = self.onnx_config.input_names
        if path is not None:
            try:
                data = self.sample_data(learn, Path(path))
            except PipelineError as error:  # the sample reader's messages name --sample, the option read
                message = str(error)
                raise PipelineError(message.replace("--sample", "--calibration", 1) if message.startswith("--sample")
                                    else message) from None
            case = self.evaluation_case(self.parity_cases(learn, data))
            rows = {name: case.inputs[name][:count] for name in names}
            total = len(rows[names[0]])
            return [{n: np.ascontiguousarray(a[i:i + 16]) for n, a in rows.items()} for i in range(0, total, 16)], str(path)
        if not has_training_data:
            raise PipelineError("this learner came without its training data: give --calibration PATH, a few hundred "
                                f"training inputs in the --sample format ({self.sample_help}); not the sample "
                                "int8 is judged on")
        batches, total = [], 0
        for batch in learn.dls.train.new(shuffle=False, drop_last=False):
            batches.append({name: np.ascontiguousarray(tensor.cpu().float().numpy())
                            for name, tensor in zip(names, batch[:len(names)])})
            total += len(batches[-1][names[0]])
            if total >= count:
                break
        return batches, f"the training split of {data.source}"

    def report_figures(self, learn, folder: Path) -> list[tuple[str, str]]:
        """Pictures for the report, saved into `folder`: (title, file name) pairs. None by default."""
        return []

    def save_weights(self, learn, folder: Path) -> Path:
        """The fastai model weights, for users who go on in fastai and for `pipelines export`."""
        import torch

        path = Path(folder) / WEIGHTS_FILE
        torch.save(learn.model.state_dict(), path)
        return path


MULTI_LABEL_TRANSFORMS = {"MultiCategorize", "EncodedMultiCategorize", "OneHotEncode"}


def target_kind(learn) -> str:
    """What a classifier-shaped Learner predicts: 'multi-label' (fastai's MultiCategoryBlock: a sigmoid per
    class, every class over a threshold), 'regression' (RegressionBlock: numbers) or 'single-label' (one
    class by softmax, what the services serve)."""
    dataset = learn.dls.train_ds
    pipelines = [*(getattr(dataset, "tfms", None) or []), getattr(dataset, "procs", None)]
    names = {type(f).__name__ for pipeline in pipelines if pipeline is not None for f in getattr(pipeline, "fs", [])}
    if names & MULTI_LABEL_TRANSFORMS or "BCE" in type(getattr(learn, "loss_func", None)).__name__:
        return "multi-label"
    if "RegressionSetup" in names:
        return "regression"
    return "single-label"


def single_label_refusal(learn, task_name: str, regression_served: bool = False) -> str | None:
    """The refusal of a Learner whose targets are not one class per input (see `target_kind`)."""
    kind = target_kind(learn)
    if kind == "multi-label":
        return (f"this {task_name} learner predicts several labels per input (multi-label: MultiCategoryBlock, "
                f"{type(learn.loss_func).__name__}); the {task_name} task serves one class per input (softmax), "
                "so its answers would be wrong; multi-label learners are not supported yet")
    if kind == "regression" and not regression_served:
        return (f"this {task_name} learner predicts numbers (RegressionBlock), not classes; the {task_name} task "
                "serves classes; regression learners of this kind are not supported yet")
    return None
