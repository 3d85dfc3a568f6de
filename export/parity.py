"""Parity proof: ONNX Runtime against PyTorch eval mode on the same inputs.

Export and validation are separate steps, as in Optimum: `export_onnx` writes the file, `check_parity`
measures it. The session comes from `services.runtime.create_session`, the function the services use.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnxruntime as ort

from export.config import OnnxConfig, ParityTolerance
from export.errors import PreprocessingMismatchError, ShapeMismatchError, ToleranceExceededError
from services.loading import softmax

if TYPE_CHECKING:  # torch is imported where a module runs: the CLI's light commands never load it
    import torch

CLASS_AXIS = 1


class FailureKind(str, enum.Enum):
    """Why a parity check failed; each kind maps to one typed error."""

    SHAPE = "shape"  # an output's shape differs from PyTorch's
    LOGITS = "logits"  # outputs differ beyond the tolerance
    PROBABILITIES = "probabilities"
    CLASSES = "classes"  # predicted classes disagree where PyTorch's margin is not a tie
    PREPROCESSING = "preprocessing"  # serving preprocessing differs from fastai's tensors


@dataclass
class ParityCase:
    """Inputs keyed by ONNX input name; `targets` enable the task metrics (`accuracy` and `dice` on class
    indices, `rmse` on regression values)."""

    name: str
    inputs: dict[str, np.ndarray]
    targets: np.ndarray | None = None
    description: str = ""
    metrics: tuple[str, ...] = ("accuracy",)
    # Reference outputs computed elsewhere (e.g. by fastai's original model one text at a time); when
    # absent, the reference is the exported PyTorch module itself.
    expected: np.ndarray | None = None
    # Random inputs (a second image size, say): they prove the graph's arithmetic, not the model's quality.
    synthetic: bool = False


@dataclass
class CaseResult:
    name: str
    description: str
    input_shapes: dict[str, list[int]]
    output_shape: list[int]
    logits_max_abs_error: float
    logits_max_rel_error: float
    probability_max_abs_error: float
    argmax_agreement: float
    disagreements_beyond_tie: int
    metrics: dict[str, dict[str, float]]  # name -> {"pytorch": value, "onnx": value}
    passed: bool
    problems: list[str] = field(default_factory=list)
    failure_kinds: list[FailureKind] = field(default_factory=list)


@dataclass
class PreprocessingCheck:
    """Serving-side preprocessing (services/) against fastai's own tensors for the same raw files."""

    compared: int
    max_abs_error: float
    passed: bool
    details: list[dict] = field(default_factory=list)


@dataclass
class ParityReport:
    task: str
    provider: str
    tolerance: dict
    cases: list[CaseResult]
    preprocessing: PreprocessingCheck | None = None
    # What was checked: the data the cases came from, and the model file they ran (its SHA-256), so that
    # registration can refuse a model.onnx that changed after it was verified.
    data_source: str = ""
    model_sha256: str = ""

    def failure_kinds(self) -> set[FailureKind]:
        kinds = {kind for case in self.cases for kind in case.failure_kinds}
        if self.preprocessing is not None and not self.preprocessing.passed:
            kinds.add(FailureKind.PREPROCESSING)
        return kinds

    @property
    def passed(self) -> bool:
        return all(case.passed for case in self.cases) and (self.preprocessing is None or self.preprocessing.passed)

    def failures(self) -> list[str]:
        problems = [f"{case.name}: {problem}" for case in self.cases for problem in case.problems]
        if self.preprocessing is not None and not self.preprocessing.passed:
            problems.append(
                f"preprocessing: serving tensors differ from fastai's by {self.preprocessing.max_abs_error:.3g}"
            )
        return problems

    def to_dict(self) -> dict:
        return {"passed": self.passed, **asdict(self)}

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def raise_for_failure(self) -> None:
        if self.passed:
            return
        kinds = self.failure_kinds()
        message = "parity failed: " + "; ".join(self.failures())
        if FailureKind.SHAPE in kinds:
            raise ShapeMismatchError(message, report=self, kinds=kinds)
        if kinds == {FailureKind.PREPROCESSING}:
            raise PreprocessingMismatchError(message, report=self, kinds=kinds)
        raise ToleranceExceededError(message, report=self, kinds=kinds)

    @classmethod
    def read(cls, path: Path) -> dict:
        return json.loads(Path(path).read_text())


# A case is run a slice of rows at a time, so that memory does not grow with the size of a user's
# validation set: at most 64 rows and about 4M input elements a run (8 images of 360x480, 2 of 720x960).
# Measured: the 1,000 fine-food reviews padded to the longest, judged in one OpenVINO run, grew
# `pipelines quantize` past 24 GB and the OOM killer ended it.
ROWS_PER_RUN = 64
ELEMENTS_PER_RUN = 1 << 22


def in_slices(run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """`run`'s output for every row of `inputs` (batch-first, as every task's model takes them), concatenated
    from runs over slices of rows."""
    count = len(next(iter(inputs.values())))
    elements_per_row = sum(value[:1].size for value in inputs.values()) or 1
    rows = max(1, min(ROWS_PER_RUN, ELEMENTS_PER_RUN // elements_per_row))
    return np.concatenate([run({name: value[start:start + rows] for name, value in inputs.items()})
                           for start in range(0, count, rows)])


def session_output(session, output: str | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """`feeds -> the output array` of an ONNX Runtime or OpenVINO session (its first output unless named)."""
    name = output or session.get_outputs()[0].name
    return lambda feeds: session.run([name], feeds)[0]


def case_outputs(session, inputs: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    """An ONNX Runtime or OpenVINO session's output (its first unless named) for every row of a case, run in
    slices."""
    return in_slices(session_output(session, output), inputs)


def torch_logits(module: torch.nn.Module, case: ParityCase, config: OnnxConfig) -> np.ndarray:
    import torch

    module = module.eval().cpu()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            output = module(*[torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in config.input_names])
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.detach().float().numpy()

    return in_slices(run, {name: case.inputs[name] for name in config.input_names})


def mean_dice(predicted: np.ndarray, targets: np.ndarray, background: int = 0) -> float:
    """Dice averaged over the non-background classes present in the prediction or the target."""
    scores = []
    for cls in np.union1d(np.unique(predicted), np.unique(targets)):
        if cls == background:
            continue
        p, t = predicted == cls, targets == cls
        scores.append(2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores)) if scores else 1.0


def task_metric(name: str, outputs: np.ndarray, classes: np.ndarray, targets: np.ndarray) -> float:
    if name == "accuracy":
        return float((classes == targets).mean())
    if name == "dice":
        return mean_dice(classes, targets)
    if name == "rmse":
        predictions = outputs.reshape(targets.shape).astype(np.float64)
        return float(np.sqrt(np.mean((predictions - targets.astype(np.float64)) ** 2)))
    raise ValueError(f"unknown parity metric {name!r}")


def compare_case(case: ParityCase, expected: np.ndarray, actual: np.ndarray, tolerance: ParityTolerance) -> CaseResult:
    shapes = {name: list(array.shape) for name, array in case.inputs.items()}
    if expected.shape != actual.shape:
        return CaseResult(
            case.name, case.description, shapes, list(actual.shape), float("inf"), float("inf"), float("inf"),
            0.0, -1, {}, False,
            [f"output shape {list(actual.shape)} differs from PyTorch's {list(expected.shape)}"], [FailureKind.SHAPE],
        )
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    max_abs = float(difference.max()) if difference.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    probability_error = float(np.abs(softmax(actual, CLASS_AXIS) - softmax(expected, CLASS_AXIS)).max()) if expected.size else 0.0
    expected_class, actual_class = expected.argmax(CLASS_AXIS), actual.argmax(CLASS_AXIS)
    agreement = float((expected_class == actual_class).mean()) if expected_class.size else 1.0
    if expected.shape[CLASS_AXIS] > 1:
        top_two = np.sort(expected, axis=CLASS_AXIS)
        margin = np.take(top_two, -1, axis=CLASS_AXIS) - np.take(top_two, -2, axis=CLASS_AXIS)
    else:  # one output column (regression): no classes to disagree on
        margin = np.zeros(expected_class.shape)
    disagreements = int(((expected_class != actual_class) & (margin > tolerance.tie_margin)).sum())
    metrics = {}
    if case.targets is not None:
        metrics = {
            name: {"pytorch": task_metric(name, expected, expected_class, case.targets),
                   "onnx": task_metric(name, actual, actual_class, case.targets)}
            for name in case.metrics
        }

    problems, kinds = [], []
    if not np.allclose(actual, expected, atol=tolerance.logits_atol, rtol=tolerance.logits_rtol):
        problems.append(
            f"logits differ by up to {max_abs:.3g} (tolerance atol={tolerance.logits_atol:g}, rtol={tolerance.logits_rtol:g})"
        )
        kinds.append(FailureKind.LOGITS)
    if probability_error > tolerance.probability_atol:
        problems.append(f"probabilities differ by up to {probability_error:.3g} (tolerance {tolerance.probability_atol:g})")
        kinds.append(FailureKind.PROBABILITIES)
    if disagreements:
        problems.append(f"{disagreements} predicted classes disagree where PyTorch's margin exceeds {tolerance.tie_margin:g}")
        kinds.append(FailureKind.CLASSES)
    return CaseResult(
        case.name, case.description, shapes, list(actual.shape), max_abs, max_rel, probability_error, agreement,
        disagreements, metrics, not problems, problems, kinds,
    )


def check_parity(
    task: str,
    module: torch.nn.Module,
    session: ort.InferenceSession,
    config: OnnxConfig,
    cases: list[ParityCase],
    progress: Callable[[str], None] = lambda line: None,
) -> ParityReport:
    results = []
    for case in cases:
        expected = case.expected if case.expected is not None else torch_logits(module, case, config)
        feeds = {name: np.ascontiguousarray(case.inputs[name]) for name in config.input_names}
        actual = case_outputs(session, feeds, config.output_names[0])
        result = compare_case(case, expected, actual, config.tolerance)
        progress(
            f"  parity {case.name:<28} max|Δlogit|={result.logits_max_abs_error:.2e} "
            f"agreement={result.argmax_agreement:.4f} {'ok' if result.passed else 'FAILED'}"
        )
        results.append(result)
    return ParityReport(
        task=task,
        provider=session.get_providers()[0],
        tolerance=asdict(config.tolerance),
        cases=results,
    )
