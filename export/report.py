"""The human-readable report: training history, loss curves and the parity table, in Markdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from export.parity import ParityReport
from services.manifest import REPORT_FILE
from services.runtime import cpu_name

LOSS_PLOT = "loss_curve.png"


@dataclass
class TrainingSummary:
    """What training did, in plain data (no fastai objects), for the manifest and the report."""

    schedule: str
    schedule_reason: str
    epochs: list[dict] = field(default_factory=list)  # one row per epoch: stage, epoch, losses, metrics
    batch_losses: list[float] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def pyplot():
    """matplotlib's pyplot on the file-only backend, imported when a figure is drawn: it costs a second, which
    the CLI's light commands (`--help`, `predict --url`) should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(summary: TrainingSummary, path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(range(1, len(summary.batch_losses) + 1), summary.batch_losses, label="train (per batch)", alpha=0.6)
    if summary.epochs and summary.batch_losses:
        per_epoch = len(summary.batch_losses) / len(summary.epochs)
        axis.plot(
            [per_epoch * (i + 1) for i in range(len(summary.epochs))],
            [row["valid_loss"] for row in summary.epochs], "o-", label="validation (per epoch)",
        )
    axis.set_xlabel("batch")
    axis.set_ylabel("loss (log scale)")
    axis.set_yscale("log")
    axis.set_title("Training and validation loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: list[dict], format_cell: Callable[[object], str] = _cell) -> str:
    """A Markdown table with the first row's keys as headers (a cell a row lacks stays empty)."""
    if not rows:
        return ""
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(format_cell(row.get(h, "")) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def write_report(folder: Path, task: str, version: str, summary: TrainingSummary | None, parity: ParityReport,
                 data_source: str, figures: list[tuple[str, str]] = ()) -> Path:
    """report.md; `summary` is None for a learner the user trained elsewhere."""
    folder = Path(folder)
    parity_rows = [
        {
            "case": case.name,
            "inputs": ", ".join(f"{name} {shape}" for name, shape in case.input_shapes.items()),
            "max abs Δlogit": case.logits_max_abs_error,
            "max rel Δlogit": case.logits_max_rel_error,
            "max abs Δprob": case.probability_max_abs_error,
            "argmax agreement": case.argmax_agreement,
            "metrics (PyTorch / ONNX Runtime)": "; ".join(
                f"{name} {_cell(v['pytorch'])} / {_cell(v['onnx'])}" for name, v in case.metrics.items()) or "-",
            "passed": "yes" if case.passed else "NO",
        }
        for case in parity.cases
    ]
    preprocessing = ""
    if parity.preprocessing is not None:
        preprocessing = (
            f"\nServing preprocessing vs fastai tensors: {parity.preprocessing.compared} raw inputs, "
            f"max abs difference {parity.preprocessing.max_abs_error:.3g} "
            f"({'passed' if parity.preprocessing.passed else 'FAILED'}).\n"
        )
    figure_section = "".join(f"\n{title}:\n\n![{title}]({name})\n" for title, name in figures)
    if summary is None:
        training = "Trained elsewhere: a fastai Learner brought by the user (`learn.export()`), loaded with `load_learner`.\n"
    else:
        if not (folder / LOSS_PLOT).is_file():
            plot_losses(summary, folder / LOSS_PLOT)
        training = (f"Schedule: {summary.schedule}; {summary.schedule_reason}. Took {summary.seconds:.0f} s.\n\n"
                    f"{markdown_table(summary.epochs)}\n\n![loss curve]({LOSS_PLOT})\n")
    text = f"""# {task} model {version}

Data: {data_source}

## Training

{training}{figure_section}
## Parity: PyTorch eval mode vs ONNX Runtime ({parity.provider})

Verdict: **{'passed' if parity.passed else 'FAILED'}**. Tolerances: {parity.tolerance}.

{markdown_table(parity_rows)}
{preprocessing}"""
    path = folder / REPORT_FILE
    path.write_text(text)
    return path


INT8_SECTION = "\n## int8: fp32 vs int8 under ONNX Runtime (`pipelines quantize`)\n"


def judged_on_line(quantized) -> str:
    machine = quantized.judged_on
    if not machine:
        return ""
    line = (f"Judged on {cpu_name(machine)} ({', '.join(machine['features']) or 'no int8 instructions'}; int8 "
            f"kernels: {machine['int8_kernels']}).")
    if (quantized.weight_bits or 8) < 8:
        return line + (f" Weights take {quantized.weight_bits} bits, so ONNX Runtime computes the same int8 on CPUs "
                       "with other int8 kernels; OpenVINO's verdict holds for CPUs with the same int8 kernels (the "
                       "service warns at start on others).")
    return line + (" The verdict holds for CPUs with the same int8 kernels (the service warns at start on others); "
                   "`pipelines quantize` on another kind of CPU judges it there.")


def write_int8_report(folder: Path, quantized) -> Path:
    """The int8 section of report.md (replacing an earlier one): the gate, what int8 lost, its speed."""
    from export.quantize import OPENVINO_INT8

    path = Path(folder) / REPORT_FILE
    text = path.read_text() if path.is_file() else ""
    text = text.split(INT8_SECTION)[0].rstrip("\n") + "\n"
    openvino = quantized.openvino
    runtimes = [("ONNX Runtime", quantized.judged)] + ([("OpenVINO", openvino.judged)] if openvino else [])
    judged_rows = [
        {"runtime": runtime, "case": case.name, "rows": case.rows, "argmax agreement": case.argmax_agreement,
         "max abs Δlogit": case.logits_max_abs_error,
         "metrics (fp32 / int8)": "; ".join(f"{name} {_cell(v['fp32'])} / {_cell(v['int8'])}"
                                             for name, v in case.metrics.items()) or "-"}
        for runtime, cases in runtimes for case in cases
    ]
    speed_rows = [{"batch": batch, "fp32 ms": times["fp32"], "int8 ms": times["int8"],
                   "speed-up": times["fp32"] / times["int8"],
                   **({"OpenVINO int8 ms": times[OPENVINO_INT8], "OpenVINO speed-up": times["fp32"] / times[OPENVINO_INT8]}
                      if OPENVINO_INT8 in times else {})}
                  for batch, times in quantized.latency_ms.items()]
    gate = quantized.gate
    verdict = "passed: served with PIPELINES_PRECISION=int8 or auto" if quantized.passed else \
        "NOT KEPT: " + "; ".join(quantized.problems)
    if openvino is None:
        openvino_verdict = "not judged (OpenVINO is not installed)"
    elif openvino.passed:
        openvino_verdict = f"passed ({openvino.runtime}): served with PIPELINES_PROVIDER=openvino"
    else:
        openvino_verdict = f"not served with OpenVINO ({openvino.runtime}): " + "; ".join(openvino.problems)
    text += f"""{INT8_SECTION}
Method: {quantized.method}; calibration: {quantized.calibration['source']}. Gate: metric loss at most
{gate['max_metric_loss']} points, argmax agreement with fp32 at least {gate['min_agreement']}, speed-up at least
{gate['min_speedup']}x. Verdict: **{verdict}**. The same file under OpenVINO, by the same gate: **{openvino_verdict}**.
{judged_on_line(quantized)}

{markdown_table(judged_rows)}

{markdown_table(speed_rows)}
"""
    path.write_text(text)
    return path
