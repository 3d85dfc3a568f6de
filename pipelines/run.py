"""The stages on one artifact folder: train, export, verify, register; `train_and_export` chains them.

Each stage prints one line as it starts (training shows fastai's progress bars) and can be rerun on the
folder on its own: `pipelines train`, `pipelines export`, `pipelines verify`, `pipelines register`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import statistics
import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from export.manifest import build_manifest
from export.onnx_export import export_onnx
from export.parity import ParityReport, case_outputs, check_parity, session_output
from export.quantize import (
    OPENVINO_INT8, WEIGHT_BITS, OtherRuntimeJudgement, QuantizationReport, gate_problems, interleaved_ms, judge_case,
    quantize_model,
)
from export.report import write_int8_report, write_report
from pipelines.artifact import ModelSource, load_model_source, read_record, write_trained
from pipelines.errors import PipelineError
from pipelines.tasks.base import Task, TaskOptions
from services.manifest import INT8_MODEL_FILE, MODEL_FILE, PARITY_FILE, Manifest, file_sha256
from services.messages import message_line
from services.runtime import ProviderUnavailableError, cpu_name, create_session, this_machine


@dataclass
class RunResult:
    output_dir: Path
    tag: str | None
    manifest: Manifest
    parity: ParityReport
    learn: object  # the trained fastai Learner, for callers that go on in Python


def stage(name: str, text: str, position: str = "") -> None:
    click.secho(f"[{position}{name}] {text}", bold=True)


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


# ----- distributed training ---------------------------------------------------------------------
def process_rank(distributed: bool) -> int:
    """This process's rank in a distributed run (`accelerate launch` and `torchrun` set RANK), else 0."""
    return int(os.environ.get("RANK", "0")) if distributed else 0


def distributed_training(learn, distributed: bool):
    """fastai's data-parallel context (DistributedDataParallel through Accelerate) for --distributed."""
    if not distributed:
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


# ----- the stages -------------------------------------------------------------------------------
def train(task: Task, options: TaskOptions, output: Path | None, distributed: bool = False,
          position: str = "") -> ModelSource | None:
    """Train with fastai into a new artifact folder; in a distributed run, processes other than the
    first train and return None."""
    from fastai.torch_core import set_seed

    options = task.resolve(options)
    rank = process_rank(distributed)
    folder = new_output_dir(task.name, output) if rank == 0 else None
    set_seed(options.seed, reproducible=True)
    stage("train", f"loading data for {task.name}", position)
    data = task.prepare_data(options)
    click.echo(f"      {data.source}: " + ", ".join(f"{k}={v}" for k, v in data.summary().items()))
    click.echo("      training (fastai)")
    built = task.build_learner(data, options)
    with distributed_training(built.learn, distributed):
        summary = task.train(built, data)
    if rank != 0:
        click.echo(f"      process {rank}: training done; process 0 exports, checks parity and registers")
        return None
    click.echo("      final: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.final_metrics.items()))
    refuse_diverged(built.learn, summary)
    write_trained(folder, task, built, data, summary, distributed)
    click.echo(f"      wrote {folder}: fastai weights, options, training history")
    return ModelSource(task, built.learn, data, read_record(folder), folder, summary)


def refuse_diverged(learn, summary) -> None:
    """A model whose weights are no longer finite would only fail parity later with `nan` everywhere."""
    import torch

    broken = [name for name, parameter in learn.model.named_parameters() if not torch.isfinite(parameter).all()]
    if broken:
        raise PipelineError(
            f"training diverged: {len(broken)} weight tensor(s) are NaN or infinite (e.g. {broken[0]}) after "
            f"{summary.schedule}; nothing was saved. Try a lower --lr, and look for data that cannot be filled or "
            "normalised (a column of extreme values, labels outside the classes)")


def export(source: ModelSource, position: str = "") -> Manifest:
    """model.onnx and manifest.json in the artifact folder, from the fastai model."""
    task, learn, folder = source.task, source.learn, source.folder
    config = task.onnx_config_for(learn)
    stage("export", f"exporting to ONNX (opset {config.opset}, {config.exporter} exporter)", position)
    module = task.exportable_module(learn)
    example = task.example_inputs(learn)
    onnx_path = folder / MODEL_FILE
    for narrowed, usual, tensor in zip(config.inputs, task.onnx_config.inputs, example):
        fixed = {usual.dynamic_axes[axis]: tensor.shape[axis] for axis in set(usual.dynamic_axes) - set(narrowed.dynamic_axes)}
        if fixed:
            click.echo(f"      {narrowed.name}: {', '.join(f'{name} fixed at {size}' for name, size in fixed.items())} "
                       "(the model does not answer at other sizes; the service resizes to this one)")
    # Written beside model.onnx and moved over it only once the manifest is made: an export that fails
    # halfway leaves the files already there (a verified model.onnx and its manifest) as they were.
    staged = folder / f".{MODEL_FILE}.new"
    try:
        exporter = export_onnx(module, example, config, staged, progress=click.echo)
        session = create_session(staged, provider="cpu")
        example_outputs = session.run(None, {name: t.numpy() for name, t in zip(config.input_names, example)})
        del session
        manifest = export_manifest(source, config, example, example_outputs, exporter)
        staged.replace(onnx_path)
    finally:
        staged.unlink(missing_ok=True)
    click.echo(f"      wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) with the {exporter} exporter")
    manifest.write(folder)
    # A new model.onnx is unverified until verify runs, and an int8 file made from the old one is stale.
    (folder / PARITY_FILE).unlink(missing_ok=True)
    (folder / INT8_MODEL_FILE).unlink(missing_ok=True)
    return manifest


def export_manifest(source: ModelSource, config, example, example_outputs, exporter: str) -> Manifest:
    task, learn, folder = source.task, source.learn, source.folder
    summary = source.summary
    record = source.record
    return build_manifest(
        task.name, config, example, example_outputs, task.labels(learn), task.preprocessing(learn),
        provenance={
            "source": record["kind"],
            "data_source": record.get("data_source"),
            # The fastai weights or learner stay here, outside the model store: the served Bento carries no pickle.
            "artifact_dir": str(folder.resolve()),
            "data": record.get("data", {}),
            "seed": record.get("options", {}).get("seed"),
            "options": record.get("options", {}),
            "learner_file": record.get("learner_file"),
            "schedule": summary.schedule if summary else None,
            "schedule_reason": summary.schedule_reason if summary else None,
            "pretrained": source.pretrained_note,
            "distributed": record.get("distributed", False),
        },
        metrics={"training": summary.final_metrics, "epochs": summary.epochs, "training_seconds": summary.seconds}
        if summary else {},
        exporter=exporter,
    )


def verify(source: ModelSource, position: str = "") -> ParityReport:
    """parity.json (and report.md): PyTorch eval mode against ONNX Runtime on the source's data, and the
    serving preprocessing against fastai's tensors. Raises a ParityError when parity fails."""
    task, learn, folder = source.task, source.learn, source.folder
    onnx_path = folder / MODEL_FILE
    if not onnx_path.is_file():
        raise PipelineError(f"{folder} has no {MODEL_FILE}; run `pipelines export {folder}` first")
    stage("verify", f"checking parity on {source.data.source}: PyTorch eval mode vs ONNX Runtime (CPU, the "
                    "service's session options)", position)
    checksum = file_sha256(onnx_path)
    session = create_session(onnx_path, provider="cpu")
    parity = check_parity(task.name, task.reference_module(learn), session, task.onnx_config_for(learn), task.parity_cases(learn, source.data),
                          progress=click.echo)
    parity.preprocessing = task.check_preprocessing(learn, source.data)
    parity.data_source, parity.model_sha256 = source.data.source, checksum
    click.echo(f"      serving preprocessing vs fastai: {parity.preprocessing.compared} raw inputs, "
               f"max abs error {parity.preprocessing.max_abs_error:.2e}")
    parity.write(folder / PARITY_FILE)
    version = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    write_report(folder, task.name, version, source.summary, parity, source.data.source,
                 task.report_figures(learn, folder) if source.summary else [])
    if not parity.passed:
        click.secho("parity FAILED: " + "; ".join(parity.failures()), fg="red", err=True)
        click.echo(f"      nothing can be registered; the failed export stays in {folder} for inspection", err=True)
        parity.raise_for_failure()
    click.secho(f"      parity passed ({len(parity.cases)} cases); wrote {folder / PARITY_FILE}", fg="green")
    return parity


class QuantizationGateFailed(PipelineError):
    """int8 lost more than the task's gate allows (or was not faster); fp32 stays what is served."""


CANDIDATE_INT8_FILE = "model.int8.candidate.onnx"  # judged before it may replace model.int8.onnx


def quantize(source: ModelSource, calibration: Path | None = None, position: str = "") -> QuantizationReport:
    """model.int8.onnx beside the verified model.onnx, judged against fp32 by the task's gate on the
    evaluation data (the validation set, or the learner's sample); the judgement goes into parity.json
    (section "int8") and the report. Raises QuantizationGateFailed when the gate is not met. An int8 model
    that passed before is never replaced by one that fails: it stays, and the refused one's judgement is
    kept in parity.json as "int8_refused"."""
    from export.store import check_verified, int8_passed

    task, learn, folder = source.task, source.learn, source.folder
    gate = task.quantization_gate
    if gate is None:
        raise PipelineError(f"the {task.name} task has no int8 recipe")
    parity = check_verified(folder)
    passed_before = int8_passed(folder, parity)
    stage("quantize", f"int8 ({gate.method} quantization) of {folder / MODEL_FILE}", position)
    calibration_batches, calibration_source = None, "none (dynamic quantization: activations are quantized per run)"
    if gate.method == "static":
        calibration_batches, calibration_source = task.calibration_batches(
            learn, source.data, calibration, gate.calibration_inputs, has_training_data=source.record["kind"] == "trained")
        rows = sum(len(next(iter(batch.values()))) for batch in calibration_batches)
        calibration_source = f"{rows} inputs from {calibration_source}"
        click.echo(f"      calibrating activation ranges on {calibration_source}")
    elif calibration is not None:
        click.echo(f"      --calibration {calibration} is not used: the {task.name} task's int8 is dynamic (activation "
                   "ranges are taken per run)")
    candidate, target = folder / CANDIDATE_INT8_FILE, folder / INT8_MODEL_FILE
    try:
        quantize_model(folder / MODEL_FILE, candidate, gate.method, calibration_batches, progress=click.echo)
        click.echo(f"      wrote {candidate} ({candidate.stat().st_size / 1e6:.1f} MB; fp32 "
                   f"{(folder / MODEL_FILE).stat().st_size / 1e6:.1f} MB)")
        report = judge_int8(source, gate, candidate, calibration_source, position)
        if report.passed or not passed_before:
            os.replace(candidate, target)
            parity.pop("int8_refused", None)
            parity["int8"] = report.to_dict()
            write_int8_report(folder, report)
        else:
            parity["int8_refused"] = report.to_dict()
        (folder / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
    finally:
        candidate.unlink(missing_ok=True)
    if not report.passed:
        kept = (f"the int8 model that passed before stays in {target}" if passed_before else
                "fp32 stays what is registered and served")
        raise QuantizationGateFailed(f"int8 not kept for {folder}: it " + "; ".join(report.problems) + f". {kept}")
    click.secho(f"      int8 passed the {task.name} gate ({report.speedup:.2f}x fp32); register carries both files",
                fg="green")
    return report


def judge_int8(source: ModelSource, gate, int8_file: Path, calibration_source: str, position: str) -> QuantizationReport:
    """The int8 file against the verified fp32 model by the task's gate: agreement and metrics on the
    evaluation data, speed on the task's bench inputs, under ONNX Runtime and (where installed) OpenVINO."""
    task, folder = source.task, source.folder
    sessions = {precision: create_session(path, provider="cpu")
                for precision, path in (("fp32", folder / MODEL_FILE), ("int8", int8_file))}
    openvino = openvino_session(int8_file)
    case = task.evaluation_case(task.parity_cases(source.learn, source.data))
    stage("quantize", f"judging int8 against fp32 on {case.name} ({source.data.source})", position)
    reference = case_outputs(sessions["fp32"], case.inputs)
    judged = judge_case(case.name, reference, case_outputs(sessions["int8"], case.inputs), case.targets, case.metrics)
    runs = {precision: session_output(session) for precision, session in
            {**sessions, **({OPENVINO_INT8: openvino} if openvino else {})}.items()}
    latency = {label: {precision: statistics.median(values) for precision, values in interleaved_ms(runs, inputs).items()}
               for label, inputs in task.bench_inputs(source.learn, case).items()}
    speedup = min(times["fp32"] / times["int8"] for times in latency.values())
    problems = gate_problems(gate, judged, speedup)
    for batch, times in latency.items():
        click.echo(f"      {batch}: fp32 {times['fp32']:.2f} ms, int8 {times['int8']:.2f} ms "
                   f"({times['fp32'] / times['int8']:.2f}x)" +
                   (f", OpenVINO int8 {times[OPENVINO_INT8]:.2f} ms" if openvino else ""))
    scores = ", ".join(f"{name} {v['fp32']:.4f} -> {v['int8']:.4f}" for name, v in judged.metrics.items())
    click.echo(f"      agreement with fp32 {judged.argmax_agreement:.4f}" + (f"; {scores}" if scores else ""))
    machine = this_machine()
    click.echo(f"      judged on {cpu_name(machine)} (int8 kernels: {machine['int8_kernels']})")
    return QuantizationReport(
        passed=not problems, method=gate.method, file=INT8_MODEL_FILE, sha256=file_sha256(int8_file),
        calibration={"source": calibration_source}, gate=dataclasses.asdict(gate), judged=[judged],
        latency_ms=latency, speedup=speedup, problems=problems,
        openvino=judge_under_openvino(gate, case, reference, openvino, latency) if openvino else None,
        judged_on=machine, weight_bits=WEIGHT_BITS,
    )


def openvino_session(int8_file: Path):
    """OpenVINO's runtime on model.int8.onnx, judged beside ONNX Runtime's where OpenVINO is installed."""
    try:
        return create_session(int8_file, provider="openvino")
    except ProviderUnavailableError:
        click.echo("      OpenVINO is not installed: int8 is judged under ONNX Runtime only "
                   "(install the `openvino` extra to serve it with PIPELINES_PROVIDER=openvino)")
    except Exception as error:  # OpenVINO raises RuntimeError for any graph it cannot read or compile
        click.echo(f"      OpenVINO could not compile {int8_file.name} ({message_line(error)}): "
                   "judged under ONNX Runtime only")
    return None


def judge_under_openvino(gate, case, reference: np.ndarray, openvino,
                         latency: dict[str, dict[str, float]]) -> OtherRuntimeJudgement:
    """The int8 file under OpenVINO, by the same gate against ONNX Runtime's fp32 outputs on the same rows."""
    judged = judge_case(case.name, reference, case_outputs(openvino, case.inputs), case.targets, case.metrics)
    speedup = min(times["fp32"] / times[OPENVINO_INT8] for times in latency.values())
    over_int8 = min(times["int8"] / times[OPENVINO_INT8] for times in latency.values())
    problems = gate_problems(gate, judged, speedup)
    scores = "".join(f", {name} {v['fp32']:.4f} -> {v['int8']:.4f}" for name, v in judged.metrics.items())
    summary = (f"OpenVINO int8: agreement with fp32 {judged.argmax_agreement:.4f}{scores}; {speedup:.2f}x fp32, "
               f"{over_int8:.2f}x ONNX Runtime int8 (the lowest over the inputs above)")
    if problems:
        click.secho(f"      {summary}; not served with OpenVINO: it " + "; ".join(problems), fg="yellow")
    else:
        click.echo(f"      {summary}; passed: PIPELINES_PROVIDER=openvino serves it")
    return OtherRuntimeJudgement(runtime=f"OpenVINO {openvino.version} CPU ({openvino.inference_precision} inference)",
                                 passed=not problems, judged=[judged], speedup=speedup,
                                 speedup_over_onnxruntime_int8=over_int8, problems=problems,
                                 inference_precision=openvino.inference_precision)


def register(folder: Path, name: str | None = None, position: str = "") -> str:
    """The verified model into the BentoML model store as NAME (default: the task's name)."""
    from export.store import register_model  # bentoml's import is only paid when registering

    folder = Path(folder)
    manifest = Manifest.read(folder) if (folder / "manifest.json").is_file() else None
    task_name = manifest.task if manifest else read_record(folder)["task"]
    name = name or task_name
    stage("register", f"saving {folder} into the BentoML model store as {name!r}", position)
    metrics = manifest.metrics.get("training", {}) if manifest else {}
    tag, precisions = register_model(
        name, folder, labels={"task": task_name, "parity": "passed"},
        metadata={"task": task_name, "data_source": (manifest.provenance.get("data_source") if manifest else "") or "",
                  **{k: round(v, 6) for k, v in metrics.items() if isinstance(v, (int, float))}},
    )
    click.secho(f"registered {tag} (now {name}:latest){' with its int8 model' if 'int8' in precisions else ''}",
                fg="green")
    return tag


def train_and_export(task: Task, values: dict) -> RunResult | None:
    """The stages in one process: train, export, verify, [quantize,] register. `values` holds the task's
    options and output, register, name, precision, distributed. In a distributed run, processes other
    than the first train and return None."""
    options = task.Options.from_mapping(values)
    int8 = values.get("precision") == "int8"
    count = 5 if int8 else 4
    position = iter(f"{n}/{count} " for n in range(1, count + 1))
    source = train(task, options, values.get("output"), bool(values.get("distributed")), next(position))
    if source is None:
        return None
    manifest = export(source, next(position))
    parity = verify(source, next(position))
    if int8:
        try:
            quantize(source, position=next(position))
        except QuantizationGateFailed as failed:
            click.secho(str(failed), fg="yellow", err=True)
    folder = source.folder
    if not values.get("register", True):
        stage("register", "skipped (--no-register)", next(position))
        return RunResult(folder, None, manifest, parity, source.learn)
    tag = register(folder, values.get("name"), next(position))
    return RunResult(folder, tag, manifest, parity, source.learn)


def export_artifact(folder: Path) -> Manifest:
    return export(load_model_source(folder))


def verify_artifact(folder: Path, sample: Path | None = None) -> ParityReport:
    return verify(load_model_source(folder, sample))


def quantize_artifact(folder: Path, calibration: Path | None = None) -> QuantizationReport:
    return quantize(load_model_source(folder), calibration)
