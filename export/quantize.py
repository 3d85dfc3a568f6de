"""int8 quantization of a verified model.onnx, judged by the task's accuracy gate.

Quantization and its judgement are separate steps, like export and parity: `quantize_model` writes
model.int8.onnx (static QDQ for convolutional models, calibrated on training inputs; dynamic for the
LSTM and the MLP), `judge_case` compares int8's outputs with fp32's on the evaluation data (each run once,
`export.parity.case_outputs`) and `gate_problems` applies the gate the task declares. Sessions come from
`services.runtime.create_session`, as served.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np

from export.errors import ExportError
from services.messages import message_line

QuantizationMethod = Literal["static", "dynamic"]
WEIGHT_BITS = 7  # see quantize_model: no kernel's 16-bit sums can overflow, so every CPU computes the same


class QuantizationError(ExportError):
    """The quantizer could not produce an int8 model from this graph."""


@dataclass(frozen=True)
class QuantizationGate:
    """What int8 may lose against fp32 on the evaluation data, and how much faster it must be to be kept.

    `max_metric_loss`: per task metric, the most it may lose, in points (accuracy and Dice: percentage
    points; rmse: percent of fp32's rmse). `min_agreement`: argmax agreement with fp32 (per pixel for
    segmentation). `min_speedup`: int8's measured speed-up over fp32 below which it is not kept (dynamic
    quantization of small models can be slower than fp32).
    """

    method: QuantizationMethod
    max_metric_loss: dict[str, float]
    min_agreement: float
    min_speedup: float = 1.0
    calibration_inputs: int = 256


@dataclass
class CaseJudgement:
    name: str
    rows: int
    argmax_agreement: float
    metrics: dict[str, dict[str, float]]  # name -> {"fp32": value, "int8": value}
    logits_max_abs_error: float


OPENVINO_INT8 = "OpenVINO int8"  # its key in QuantizationReport.latency_ms, beside "fp32" and "int8"


@dataclass
class OtherRuntimeJudgement:
    """The same model.int8.onnx judged under another runtime (OpenVINO) by the same gate against ONNX
    Runtime's fp32: served with that runtime only where it passed."""

    runtime: str
    passed: bool
    judged: list[CaseJudgement]
    speedup: float  # over ONNX Runtime fp32, the lowest over the bench inputs
    speedup_over_onnxruntime_int8: float
    problems: list[str] = field(default_factory=list)
    # OpenVINO's float precision on the judging CPU (f32, or bf16 where the CPU has bf16 instructions)
    inference_precision: str | None = None


@dataclass
class QuantizationReport:
    """The int8 section of parity.json."""

    passed: bool
    method: str
    file: str
    sha256: str
    calibration: dict
    gate: dict
    judged: list[CaseJudgement]
    latency_ms: dict[str, dict[str, float]]  # {"batch 1": {"fp32": .., "int8": ..}, ...}
    speedup: float
    problems: list[str] = field(default_factory=list)
    openvino: OtherRuntimeJudgement | None = None  # None where OpenVINO is not installed
    judged_on: dict | None = None  # services.runtime.this_machine()
    weight_bits: int | None = None  # 7: the file computes the same on every CPU (quantize_model); None: older, 8

    def to_dict(self) -> dict:
        return asdict(self)


# ----- quantizing ---------------------------------------------------------------------------------
def calibration_reader(batches: Iterable[dict[str, np.ndarray]]):
    """Calibration batches for ONNX Runtime's static quantizer (its reader interface; imported here because
    onnxruntime.quantization is slow to import)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(list(batches))

        def get_next(self):
            return next(self.batches, None)

    return ArrayReader()


def preprocess_for_quantization(source: Path, target: Path, progress: Callable[[str], None]) -> None:
    """ONNX Runtime's `quant_pre_process` (shape inference, Conv+BatchNorm folding). Its symbolic shape
    inference fails on some graphs (the dynamo export of the Siamese model, measured): ONNX's own shape
    inference is used for those."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The symbolic shape inference writes temporary files (and, when it fails, leaves them) in the working
    # directory: it runs in the scratch folder the target is in.
    source, target, previous = Path(source).resolve(), Path(target).resolve(), Path.cwd()
    os.chdir(target.parent)
    try:
        try:
            quant_pre_process(str(source), str(target))
        except Exception as error:  # the symbolic shape inference raises many types
            progress(f"      symbolic shape inference failed ({type(error).__name__}); using ONNX shape inference")
            quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    finally:
        os.chdir(previous)


# Operators that only move values, which ONNX Runtime's CPU kernels run on uint8 but its QDQ quantizer
# leaves in float: left alone, each costs a dequantize, a float copy of the tensor and a requantize. Every
# fastai U-Net upsamples with PixelShuffle (DepthToSpace): measured on a 100x150 U-Net, its five
# DepthToSpace took 11.2 ms in float and 4.5 ms on uint8 per call (2-core EPYC; README, results log).
EIGHT_BIT_DATA_MOVEMENT = ("DepthToSpace",)


@contextlib.contextmanager
def quantizing_data_movement_in_eight_bits():
    """Registers EIGHT_BIT_DATA_MOVEMENT with the QDQ quantizer the way it registers Transpose and Reshape
    (output takes the input's scale and zero point, so the values are exactly permuted), for one call."""
    from onnxruntime.quantization import registry
    from onnxruntime.quantization.operators.direct_q8 import QDQDirect8BitOp

    added = [op for op in EIGHT_BIT_DATA_MOVEMENT if op not in registry.QDQRegistry]
    registry.QDQRegistry.update({op: QDQDirect8BitOp for op in added})
    try:
        yield
    finally:
        for op in added:
            registry.QDQRegistry.pop(op, None)


def quantize_model(source: Path, target: Path, method: QuantizationMethod,
                   calibration: list[dict[str, np.ndarray]] | None = None,
                   progress: Callable[[str], None] = lambda line: None) -> None:
    """Write the int8 model of `source` to `target`.

    static: QDQ format, uint8 activations, int8 per-channel weights, MinMax ranges from `calibration`
    (the convolutional models; ONNX Runtime has no u8s8 ConvInteger on the CPU, so dynamic quantization
    of convolutions is never used). Symmetric int8 weights keep ONNX Runtime on its direct int8
    convolution kernel (measured: asymmetric or uint8 weights take its im2col + GEMM path, 1.2-2.0x slower
    on the U-Net and the Siamese model). dynamic: int8 weights of MatMul, Gemm and LSTM, activations
    quantized at run time (the LSTM and the MLP, which have no activations worth calibrating).

    Weights take 7 bits (`reduce_range`, WEIGHT_BITS): on CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's
    u8s8 kernels add pairs of u8 x s8 products in 16 bits, and 255 x 127 x 2 overflows them; 255 x 63 x 2
    does not. So the int8 file computes the same on every CPU, and the verdict judged on one holds on the
    others. Measured on 2 EPYC cores (AVX2): the Siamese model's int8 with 8-bit weights agreed with its
    own exact QDQ arithmetic on 99.72% of the validation pairs (accuracy 0.9443, fp32 0.9471), with 7-bit
    weights on 100% (accuracy 0.9471), at the same speed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a warning per 1-D weight it cannot quantize per channel
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        preprocess_for_quantization(source, prepared, progress)
        try:
            if method == "static":
                if not calibration:
                    raise QuantizationError("static quantization needs calibration inputs")
                with quantizing_data_movement_in_eight_bits():
                    quantize_static(
                        str(prepared), str(target), calibration_reader(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=WEIGHT_BITS < 8, calibrate_method=CalibrationMethod.MinMax,
                    )
            else:
                quantize_dynamic(str(prepared), str(target), op_types_to_quantize=["MatMul", "Gemm", "LSTM"],
                                 weight_type=QuantType.QInt8, per_channel=False, reduce_range=WEIGHT_BITS < 8)
        except QuantizationError:
            raise
        except Exception as error:
            raise QuantizationError(f"ONNX Runtime's quantizer failed ({type(error).__name__}): "
                                    f"{message_line(error)}") from None
        finally:
            root.setLevel(level)


# ----- judging ------------------------------------------------------------------------------------
def metric_loss(name: str, fp32: float, int8: float) -> float:
    """How much int8 lost on a metric, in the gate's unit (points; percent of fp32 for rmse)."""
    if name == "rmse":
        return 100.0 * (int8 - fp32) / fp32 if fp32 > 0 else 100.0 * int8
    return 100.0 * (fp32 - int8)


def judge_case(name: str, reference: np.ndarray, quantized: np.ndarray, targets: np.ndarray | None,
               metrics: tuple[str, ...]) -> CaseJudgement:
    """int8's outputs against fp32's on the same rows of an evaluation case (`case_outputs` of each)."""
    from export.parity import CLASS_AXIS, task_metric

    reference_class, quantized_class = reference.argmax(CLASS_AXIS), quantized.argmax(CLASS_AXIS)
    scores = {}
    if targets is not None:
        scores = {metric: {"fp32": task_metric(metric, reference, reference_class, targets),
                           "int8": task_metric(metric, quantized, quantized_class, targets)} for metric in metrics}
    return CaseJudgement(
        name=name, rows=int(reference.shape[0]),
        argmax_agreement=float((reference_class == quantized_class).mean()),
        metrics=scores, logits_max_abs_error=float(np.abs(quantized - reference).max()),
    )


def gate_problems(gate: QuantizationGate, judged: CaseJudgement, speedup: float) -> list[str]:
    problems = []
    if judged.argmax_agreement < gate.min_agreement:
        problems.append(f"agrees with fp32 on {100 * judged.argmax_agreement:.1f}% of predictions "
                        f"(the gate needs {100 * gate.min_agreement:.0f}%)")
    for metric, values in judged.metrics.items():
        limit = gate.max_metric_loss.get(metric)
        lost = metric_loss(metric, values["fp32"], values["int8"])
        if limit is not None and lost > limit:
            unit = "% of fp32's" if metric == "rmse" else " points of"
            problems.append(f"loses {lost:.2f}{unit} {metric} ({values['fp32']:.4f} -> {values['int8']:.4f}; "
                            f"the gate allows {limit:g})")
    if speedup < gate.min_speedup:
        problems.append(f"runs at {speedup:.2f}x fp32's speed (kept only from {gate.min_speedup:g}x)")
    return problems


def interleaved_ms(runs: dict[str, Callable[[dict[str, np.ndarray]], object]], inputs: dict[str, np.ndarray],
                   rounds: int = 5, repeats: int = 5, budget_s: float = float("inf")) -> dict[str, list[float]]:
    """Milliseconds per call of each run, measured in alternating rounds (every run `repeats` times per
    round) so that all see the same machine; fewer rounds (at least two) when they pass the time budget."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(inputs)  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    for index in range(rounds):
        for name, run in runs.items():
            run(inputs)  # untimed: the first call after another run's turn pays for the switch
            for _ in range(repeats):
                begin = time.perf_counter()
                run(inputs)
                samples[name].append((time.perf_counter() - begin) * 1000)
        if index >= 1 and time.perf_counter() - started > budget_s:
            break
    return samples


def rows_of(inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """The first `count` rows of every input (repeating rows when there are fewer)."""
    first = next(iter(inputs.values()))
    index = np.arange(count) % first.shape[0]
    return {name: np.ascontiguousarray(array[index]) for name, array in inputs.items()}
