"""`pipelines`: the command line. A thin layer over the task registry and pipelines.run."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from pathlib import Path

import click

from pipelines.errors import PipelineError
from pipelines.registry import TASKS, get_task

OUTPUT_OPTION = click.Option(["--output"], type=click.Path(path_type=Path), default=None,
                             help="New folder for this run's files [default: artifacts/TASK/TIMESTAMP]. Never overwritten.")
DISTRIBUTED_OPTION = click.Option(
    ["--distributed"], is_flag=True, default=False,
    help="Data-parallel training (fastai distrib_ctx) across the processes `accelerate launch` or `torchrun` starts; "
         "the first process alone exports, checks parity and registers. Needs the `distributed` extra.")
NAME_HELP = "Model name in the BentoML model store [default: the task's name], e.g. tabular-adult."


def checked_model_name(ctx, param, value):
    """--name is checked before anything runs: train-and-export would otherwise train for minutes first."""
    from export.errors import InvalidModelNameError
    from export.store import check_model_name

    try:
        return None if value is None else check_model_name(value)
    except InvalidModelNameError as error:
        raise click.BadParameter(str(error)) from None


CHAIN_OPTIONS = [
    OUTPUT_OPTION,
    click.Option(["--register/--no-register"], default=True, show_default=True,
                 help="Save into the BentoML model store (only ever after parity passed)."),
    click.Option(["--name"], default=None, help=NAME_HELP, callback=checked_model_name),
    click.Option(["--precision"], type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
                 help="int8: also quantize after verify (`pipelines quantize`); registered beside fp32 only when "
                      "it passes the task's accuracy gate."),
    DISTRIBUTED_OPTION,
]


def report_errors(function, debug: bool):
    """Run a command; user-facing failures become one line on stderr and a non-zero exit."""
    from export.errors import ExportError
    from services.manifest import ManifestVersionError
    from services.runtime import ProviderUnavailableError

    try:
        return function()
    except (PipelineError, ProviderUnavailableError) as error:
        raise click.ClickException(str(error)) from None
    except ExportError as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    except ManifestVersionError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was registered", err=True)
        sys.exit(130)
    except Exception as error:
        if debug:
            raise
        raise click.ClickException(
            f"unexpected {type(error).__name__}: {error} (rerun with PIPELINES_DEBUG=1 for the traceback)"
        ) from None


def debug_enabled() -> bool:
    return bool(os.environ.get("PIPELINES_DEBUG"))


def chain_command(name: str) -> click.Command:
    task_class = TASKS[name]

    def run(**options):
        from pipelines.run import train_and_export

        result = report_errors(lambda: train_and_export(get_task(name), options), debug_enabled())
        if result is None:  # a secondary process of a distributed run: process 0 exports
            return
        click.echo(f"artifacts: {result.output_dir}")
        if result.tag:
            click.echo(f"serve it:  {serve_hint(name, result.tag)}")

    return click.Command(
        name, callback=run, params=[*task_class.cli_options(), *CHAIN_OPTIONS],
        help=f"Train the {name} task ({task_class.summary}), export to ONNX, prove parity, register.",
    )


def train_command(name: str) -> click.Command:
    task_class = TASKS[name]

    def run(output, distributed, **options):
        from pipelines.run import train

        task = get_task(name)
        source = report_errors(lambda: train(task, task.Options.from_mapping(options), output, distributed),
                               debug_enabled())
        if source is not None:
            click.echo(f"next: pipelines export {source.folder}")

    return click.Command(
        name, callback=run, params=[*task_class.cli_options(), OUTPUT_OPTION, DISTRIBUTED_OPTION],
        help=f"Train the {name} task ({task_class.summary}) with fastai into a new artifact folder.",
    )


def serve_hint(task: str, tag: str) -> str:
    name = tag.split(":")[0]
    variable = f"{task.upper()}_MODEL_TAG={tag} " if name != task else ""
    return f"{variable}bentoml serve services.{task}:{task.capitalize()}Service  (model {tag})"


class TaskGroup(click.Group):
    """One subcommand per registered task; an unknown task is a one-line error naming the known ones."""

    def __init__(self, *args, command_factory=chain_command, **kwargs):
        super().__init__(*args, **kwargs)
        self.command_factory = command_factory

    def list_commands(self, ctx):
        return sorted(TASKS)

    def get_command(self, ctx, name):
        return self.command_factory(name) if name in TASKS else None

    def resolve_command(self, ctx, args):
        if args and args[0] not in TASKS and not args[0].startswith("-"):
            raise click.UsageError(f"unknown task {args[0]!r}; known tasks: {', '.join(sorted(TASKS))}", ctx)
        return super().resolve_command(ctx, args)


# fastai's import triggers torch's own deprecation notice for torch.jit.script; it says nothing to our users.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
# fastai turns pandas columns into tensors without a copy; harmless, and noise in every tabular run.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@click.group(help="Train fastai models, export them to ONNX with a parity proof, and serve them with BentoML.")
@click.version_option(package_name="fastai-onnx-pipelines")
def main():
    pass


@main.group("train", cls=TaskGroup, command_factory=train_command)
def train_group():
    """Stage 1: train a task with fastai into a new artifact folder (weights, options, training history)."""


@main.command("export")
@click.argument("artifact", required=False, type=click.Path(path_type=Path))
@click.option("--learner", type=click.Path(path_type=Path), default=None,
              help="A fastai learn.export() file to export instead of an artifact folder (loaded with load_learner: "
                   "only files you trust).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="A learn.save() weights file to export instead (no pickle); needs --task and --options.")
@click.option("--options", "options_file", type=click.Path(path_type=Path), default=None,
              help="With --weights: the JSON of the task's options the model was trained with (what `pipelines train` "
                   "writes into source.json), so the data and architecture can be rebuilt.")
@click.option("--task", "task_name", type=click.Choice(["auto", *sorted(TASKS)]), default="auto", show_default=True,
              help="The learner's task; 'auto' recognises it from the model.")
@click.option("--sample", type=click.Path(path_type=Path), default=None,
              help="With --learner: raw inputs to check parity on (images, a CSV of image pairs, records or texts).")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="With --learner or --weights: new artifact folder [default: artifacts/TASK/TIMESTAMP].")
def export_command(artifact, learner, weights, options_file, task_name, sample, output):
    """Stage 2: write model.onnx and manifest.json into ARTIFACT (a `pipelines train` folder), or into a new
    artifact folder made from your own learner (--learner export.pkl --sample PATH) or weights
    (--weights file.pth --task TASK --options options.json)."""
    from pipelines.artifact import import_learner, import_weights
    from pipelines.run import export, export_artifact, new_output_dir

    chosen = [flag for flag, value in (("ARTIFACT", artifact), ("--learner", learner), ("--weights", weights)) if value]
    if len(chosen) != 1:
        raise click.UsageError("give one of ARTIFACT, --learner FILE or --weights FILE")

    def run() -> Path:
        if artifact is not None:
            export_artifact(artifact)
            return Path(artifact)
        if learner is not None:
            if sample is None:
                raise PipelineError("--learner needs --sample PATH: raw inputs (images, a CSV of image pairs, "
                                    "records or texts) to prove parity on")
            if not Path(learner).is_file():
                raise PipelineError(f"--learner {learner}: no such file")
            folder = new_output_dir(task_name if task_name != "auto" else "learner", output)
            with removed_on_failure(folder):
                source = import_learner(learner, sample, folder, task_name)
            export(source)
            return folder
        if task_name == "auto" or options_file is None:
            raise PipelineError("--weights needs --task TASK and --options OPTIONS.json (the options it was trained with)")
        folder = new_output_dir(task_name, output)
        with removed_on_failure(folder):  # the weights are first loaded into a model when it is exported
            import_weights(get_task(task_name), weights, options_file, folder)
            export_artifact(folder)
        return folder

    folder = report_errors(run, debug_enabled())
    click.echo(f"next: pipelines verify {folder}")


@contextlib.contextmanager
def removed_on_failure(folder: Path):
    """The new folder an import writes into goes again when the import fails (weights that do not fit the
    model their options describe, a pickle that needs code that is not here, a sample that does not fit), so
    the same --output works on the next try. A learner whose export fails after its import (no exporter
    converts a layer) keeps its folder for `pipelines export FOLDER` to retry."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@main.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--sample", type=click.Path(path_type=Path), default=None,
              help="Raw inputs to check parity on instead of the validation set (or the sample given at export).")
def verify_command(artifact, sample):
    """Stage 3: prove that model.onnx computes what PyTorch computes (parity.json); exit 1 when it does not."""
    from pipelines.run import verify_artifact

    report_errors(lambda: verify_artifact(artifact, sample), debug_enabled())
    click.echo(f"next: pipelines register {artifact}")


@main.command("quantize")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Inputs for static quantization's activation ranges, in the --sample format [default: the "
                   "training split; required for a learner brought without its training data].")
def quantize_command(artifact, calibration):
    """Stage 3b: write model.int8.onnx beside a verified model.onnx and judge it against fp32 with the task's
    accuracy gate (parity.json, report.md); exit 1 when int8 fails the gate (fp32 stays what is served)."""
    from pipelines.run import quantize_artifact

    report_errors(lambda: quantize_artifact(artifact, calibration), debug_enabled())
    click.echo(f"next: pipelines register {artifact}")


@main.command("register")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--name", default=None, help=NAME_HELP, callback=checked_model_name)
def register_command(artifact, name):
    """Stage 4: save a verified model into the BentoML model store (refused unless parity.json passed for
    exactly this model.onnx)."""
    from pipelines.run import register

    from services.manifest import Manifest

    tag = report_errors(lambda: register(artifact, name), debug_enabled())
    click.echo(f"serve it:  {serve_hint(Manifest.read(artifact).task, tag)}")


@main.command("bench")
@click.argument("target", required=False)
@click.option("--url", "urls", multiple=True,
              help="Benchmark a running Bento at this URL instead of a model in process; repeat it to compare "
                   "servers (their settings) in alternating rounds.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True,
              help="Threads for PyTorch and each ONNX Runtime session (same for every runtime).")
@click.option("--rounds", type=click.IntRange(2), default=7, show_default=True,
              help="Interleaved rounds per input; with several --url, per endpoint and concurrency level.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Calls per runtime and round.")
@click.option("--openvino/--no-openvino", default=True, show_default=True,
              help="Add OpenVINO's CPU runtime on the same model.onnx (and model.int8.onnx) as reference rows, "
                   "when it is installed.")
@click.option("--concurrency", default="1,8,32", show_default=True, help="With --url: concurrent clients to sweep.")
@click.option("--requests", type=click.IntRange(1), default=200, show_default=True,
              help="With --url: requests per endpoint, concurrency level and server.")
@click.option("--seconds", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Time budget per input (in process) or per endpoint, concurrency level and server (--url).")
@click.option("--endpoint", "endpoints", multiple=True, help="With --url: only this endpoint (repeatable), e.g. /siamese/predict.")
@click.option("--results", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True,
              help="Folder for the log and the chart.")
def bench_command(target, urls, threads, rounds, repeats, openvino, concurrency, requests, seconds, endpoints, results):
    """Measure TARGET (an artifact folder or a model tag such as siamese:latest) in one process: fastai/PyTorch
    eager, ONNX Runtime fp32 and int8 (and OpenVINO as a reference), at batch 1 and 16; or, with --url, a
    running Bento at 1, 8 and 32 concurrent clients (several --url: servers with different settings, in
    alternating rounds). Prints a table, writes a log and a PNG chart under benchmarks/results/."""
    from pipelines.bench import bench_model, bench_url

    if (target is None) == (not urls):
        raise click.UsageError("give TARGET (artifact folder or model tag) or --url URL")
    if urls:
        try:
            levels = tuple(int(part) for part in concurrency.split(","))
        except ValueError:
            raise click.UsageError(f"--concurrency {concurrency!r}: comma-separated client counts, e.g. 1,8,32") from None
        report_errors(lambda: bench_url(urls, levels, requests, seconds, endpoints, rounds, results),
                      debug_enabled())
    else:
        report_errors(lambda: bench_model(target, threads, rounds, repeats, seconds, openvino, results),
                      debug_enabled())


@main.group("predict")
@click.option("--url", default=None, help="A running Bento, e.g. http://localhost:3000.")
@click.option("--model", default=None, help="Instead of --url: a model in the BentoML store (e.g. siamese:latest), "
                                            "run in this process with ONNX Runtime, no server.")
@click.pass_context
def predict_group(ctx, url, model):
    """Predict with a served or registered model: siamese A B; unet IMAGE -o MASK.png; text "..." or --file;
    tabular --csv IN.csv --out OUT.csv; classifier IMAGE..."""
    ctx.obj = {"url": url, "model": model}


def prediction(ctx, task: str, action):
    from pipelines.predict import run_prediction

    options = ctx.obj
    return report_errors(lambda: run_prediction(options["url"], options["model"], task, action), debug_enabled())


@predict_group.command("siamese")
@click.argument("image_a", type=click.Path(path_type=Path))
@click.argument("image_b", type=click.Path(path_type=Path))
@click.pass_context
def predict_siamese(ctx, image_a, image_b):
    """Are IMAGE_A and IMAGE_B of the same class?"""
    from pipelines.predict import existing

    answer = prediction(ctx, "siamese", lambda p: p.compare(*existing([image_a, image_b])))
    click.echo(f"{'same' if answer.same else 'different'} (probability same {answer.probability_same:.4f}; "
               f"{answer.model}, {answer.precision})")


@predict_group.command("unet")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the class mask PNG (pixel value = class index); never overwritten.")
@click.pass_context
def predict_unet(ctx, image, output):
    """Segment IMAGE into a class mask PNG of its size."""
    from pipelines.predict import existing

    if output.exists():
        raise click.ClickException(f"--output {output} already exists; choose a new file")
    mask = prediction(ctx, "unet", lambda p: p.segment(existing([image])[0]))
    mask.save(output, format="PNG")
    import numpy as np

    from services.schemas import NOT_SEEN

    present = [str(index) if index != NOT_SEEN else f"{NOT_SEEN} (not seen: the model's Resize cropped it off)"
               for index in np.unique(np.asarray(mask))]
    click.echo(f"wrote {output} ({mask.width}x{mask.height}; class indices present: {', '.join(present)})")


@predict_group.command("text")
@click.argument("texts", nargs=-1)
@click.option("--file", type=click.Path(path_type=Path), default=None, help="One text per line.")
@click.pass_context
def predict_text(ctx, texts, file):
    """Classify TEXTS (or the lines of --file): one line each, label and probability, then the text."""
    from pipelines.predict import read_texts

    batch = report_errors(lambda: read_texts(texts, file), debug_enabled())
    answer = prediction(ctx, "text", lambda p: p.classify_batch(batch))
    for text, result in zip(batch, answer.predictions):
        click.echo(f"{result.label}\t{result.probabilities[result.label]:.4f}\t{text[:80]}")


@predict_group.command("tabular")
@click.option("--csv", "source", type=click.Path(path_type=Path), required=True, help="Records, one per row.")
@click.option("--out", "target", type=click.Path(path_type=Path), required=True,
              help="The input's columns plus prediction and probability columns; never overwritten.")
@click.pass_context
def predict_tabular(ctx, source, target):
    """Predict every row of a CSV, in chunks, with a progress bar."""
    from pipelines.predict import predict_csv

    count = prediction(ctx, "tabular", lambda p: predict_csv(p, source, target))
    click.echo(f"wrote {count} predictions to {target}")


@predict_group.command("classifier")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-k", "--top", "k", type=click.IntRange(1), default=3, show_default=True, help="Classes per image.")
@click.pass_context
def predict_classifier(ctx, images, k):
    """The k most probable classes of each image."""
    from pipelines.predict import existing

    answer = prediction(ctx, "classifier", lambda p: p.classify_images(existing(images), k))
    for image, result in zip(images, answer.predictions):
        click.echo(f"{image}: " + ", ".join(f"{item.label} {item.probability:.4f}" for item in result.top))


@main.group("train-and-export", cls=TaskGroup)
def train_and_export_group():
    """Train a task with fastai, export it to ONNX, check parity, save it into the BentoML model store."""


@main.command("tasks")
def list_tasks():
    """List the registered tasks."""
    for name in sorted(TASKS):
        click.echo(f"{name:<10} {TASKS[name].summary}")


if __name__ == "__main__":
    main()
