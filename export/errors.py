"""Typed export failures. Each one means: nothing is registered as the latest model."""


class ExportError(RuntimeError):
    """Base class for failures of the export stage."""


class OnnxExportFailedError(ExportError):
    """Every exporter the task allows failed to convert the module."""


class OnnxGraphError(ExportError):
    """The exported graph is not what the task's OnnxConfig declares (names, external data, checker)."""


class ParityError(ExportError):
    """ONNX Runtime does not compute what PyTorch computed; `report` holds the measurements."""

    def __init__(self, message: str, report=None, kinds=frozenset()):
        super().__init__(message)
        self.report = report
        self.kinds = set(kinds)  # export.parity.FailureKind values


class ShapeMismatchError(ParityError):
    """An ONNX Runtime output has another shape than PyTorch's."""


class ToleranceExceededError(ParityError):
    """Outputs differ by more than the task's tolerance, or the predicted classes disagree."""


class PreprocessingMismatchError(ParityError):
    """The serving-side preprocessing does not reproduce fastai's tensors."""


class NotVerifiedError(ExportError):
    """Registration refused: no passing parity.json for exactly this model.onnx."""


class InvalidModelNameError(ExportError):
    """Registration refused: a name the BentoML model store does not take."""
