"""The whole chain for one task: data, training, export, parity, artifact, registration.

Each stage prints one line as it starts; training shows fastai's progress bars.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import click

from export.onnx_export import export_onnx
from export.parity import ParityReport, check_parity
from export.report import write_report
from pipelines.errors import PipelineError
from pipelines.tasks.base import Task
from services.manifest import MODEL_FILE, PARITY_FILE, Manifest
from services.runtime import create_session

STAGES = ("data", "training", "export", "parity", "artifact", "registration")
PACKAGES = ("torch", "fastai", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "bentoml", "numpy", "pillow")


@dataclass
class RunResult:
    output_dir: Path
    tag: str | None
    manifest: Manifest
    parity: ParityReport
    learn: object  # the trained fastai Learner, for callers that go on in Python


def stage(number: int, text: str) -> None:
    click.secho(f"[{number}/{len(STAGES)}] {STAGES[number - 1]}: {text}", bold=True)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def new_output_dir(task: str, output: Path | None) -> Path:
    """A fresh folder for this run's files: nothing from an earlier run is ever overwritten."""
    if output is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path("artifacts") / task / stamp
        suffix = 1
        while output.exists():
            output = Path("artifacts") / task / f"{stamp}-{suffix}"
            suffix += 1
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise PipelineError(f"--output {output} already exists and is not an empty folder; choose a new one")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"--output {output}: cannot create the folder ({error.strerror})") from None
    return output


def process_rank(options: dict) -> int:
    """This process's rank in a distributed run (`accelerate launch` and `torchrun` set RANK), else 0."""
    return int(os.environ.get("RANK", "0")) if options.get("distributed") else 0


def distributed_training(learn, options: dict):
    """fastai's data-parallel context (DistributedDataParallel through Accelerate) for --distributed."""
    if not options.get("distributed"):
        return contextlib.nullcontext()
    try:
        import accelerate  # noqa: F401
        import fastai.distributed  # noqa: F401  (adds Learner.distrib_ctx)
    except ImportError:
        raise PipelineError("--distributed needs Accelerate: pip install 'fastai-onnx-pipelines[distributed]'") from None
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        click.echo("      --distributed in a single process: start N processes with `torchrun --standalone "
                   "--nproc_per_node N` or `accelerate launch --multi_gpu --num_processes N`")
    import torch

    if torch.cuda.is_available():
        return learn.distrib_ctx()
    # Without CUDA, Accelerate treats several processes as one unless told to use the CPU (gloo backend),
    # SyncBatchNorm exists only on GPUs, and fastai's DistributedDL broadcasts its shuffled indices as a
    # CUDA tensor (nccl's need); gloo broadcasts CPU tensors.
    fastai.distributed.DistributedDL._broadcast = broadcast_on_cpu
    return learn.distrib_ctx(sync_bn=False, cpu=True)


def broadcast_on_cpu(self, values, rank):
    import torch

    tensor = torch.LongTensor(values)
    torch.distributed.broadcast(tensor, rank)
    return tensor.tolist()


def train_and_export(task: Task, options: dict) -> RunResult | None:
    """The whole chain; in a distributed run, processes other than the first train and return None."""
    from fastai.torch_core import set_seed

    options["batch_size"] = options.get("batch_size") or task.default_batch_size
    rank = process_rank(options)
    output_dir = new_output_dir(task.name, options.get("output")) if rank == 0 else None
    set_seed(options["seed"], reproducible=True)

    stage(1, f"loading data for {task.name}")
    data = task.prepare_data(options)
    click.echo(f"      {data.source}: " + ", ".join(f"{k}={v}" for k, v in data.summary().items()))

    stage(2, "training (fastai)")
    learn = task.build_learner(data, options)
    with distributed_training(learn, options):
        summary = task.train(learn, options)
    if rank != 0:
        click.echo(f"      process {rank}: training done; process 0 exports, checks parity and registers")
        return None
    click.echo("      final: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.final_metrics.items()))

    stage(3, f"exporting to ONNX (opset {task.onnx_config.opset}, {task.onnx_config.exporter} exporter)")
    module = task.exportable_module(learn)
    example = task.example_inputs(learn)
    onnx_path = output_dir / MODEL_FILE
    exporter = export_onnx(module, example, task.onnx_config, onnx_path, progress=click.echo)
    click.echo(f"      wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) with the {exporter} exporter")

    stage(4, "checking parity: PyTorch eval mode vs ONNX Runtime (CPU, the service's session options)")
    session = create_session(onnx_path, provider="cpu")
    parity = check_parity(task.name, module, session, task.onnx_config, task.parity_cases(learn, data), progress=click.echo)
    parity.preprocessing = task.check_preprocessing(learn, data)
    click.echo(
        f"      serving preprocessing vs fastai: {parity.preprocessing.compared} raw inputs, "
        f"max abs error {parity.preprocessing.max_abs_error:.2e}"
    )

    stage(5, f"writing manifest, parity report and Markdown report to {output_dir}")
    version = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    example_outputs = session.run(None, {name: t.numpy() for name, t in zip(task.onnx_config.input_names, example)})
    manifest = Manifest(
        task=task.name,
        inputs=task.onnx_config.tensor_specs(task.onnx_config.inputs, [tuple(t.shape) for t in example]),
        outputs=task.onnx_config.tensor_specs(task.onnx_config.outputs, [o.shape for o in example_outputs]),
        labels=task.labels(learn),
        preprocessing=task.preprocessing(learn),
        provenance={
            "data_source": data.source,
            # The fastai weights stay here, outside the model store: the served Bento carries no pickle.
            "artifact_dir": str(output_dir.resolve()),
            "data": data.summary(),
            "seed": options["seed"],
            "options": json.loads(json.dumps(options, default=str)),
            "schedule": summary.schedule,
            "schedule_reason": summary.schedule_reason,
            "pretrained": getattr(learn, "pretrained_note", None),
            "packages": package_versions(),
            "opset": task.onnx_config.opset,
            "exporter": exporter,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        metrics={"training": summary.final_metrics, "epochs": summary.epochs, "training_seconds": summary.seconds},
    )
    manifest.write(output_dir)
    parity.write(output_dir / PARITY_FILE)
    write_report(output_dir, task.name, version, summary, parity, data.source, task.report_figures(learn, output_dir))
    task.save_weights(learn, output_dir)

    if not parity.passed:
        click.secho("parity FAILED: " + "; ".join(parity.failures()), fg="red", err=True)
        click.echo(f"      nothing was registered; the failed export stays in {output_dir} for inspection", err=True)
        parity.raise_for_failure()

    if not options.get("register", True):
        stage(6, "skipped (--no-register)")
        return RunResult(output_dir, None, manifest, parity, learn)
    stage(6, "saving into the BentoML model store")
    from export.store import register_model  # bentoml's import is only paid when registering

    tag = register_model(
        task.name, output_dir,
        labels={"task": task.name, "parity": "passed"},
        metadata={"data_source": data.source, **{k: round(v, 6) for k, v in summary.final_metrics.items()}},
    )
    click.secho(f"registered {tag} (now {task.name}:latest)", fg="green")
    return RunResult(output_dir, tag, manifest, parity, learn)
