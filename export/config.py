"""One OnnxConfig per task, in the manner of Hugging Face Optimum's exporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.manifest import TensorSpec


@dataclass(frozen=True)
class TensorConfig:
    name: str
    dtype: str
    # Symbolic names of dynamic axes by position; other axes are fixed at their export size.
    dynamic_axes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParityTolerance:
    logits_atol: float
    logits_rtol: float
    probability_atol: float
    # Predicted classes must agree wherever PyTorch's top-two margin exceeds this (a true tie may flip).
    tie_margin: float = 1e-4
    # On normalised pixels: 1/1700 of a grey level. Item-level preprocessing matches fastai exactly; where
    # fastai resamples batches (aug_transforms), float32 rounding alone reaches 1.2e-6.
    preprocessing_atol: float = 1e-5


@dataclass(frozen=True)
class OnnxConfig:
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    opset: int
    tolerance: ParityTolerance
    exporter: Literal["dynamo", "torchscript"] = "dynamo"

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def tensor_specs(self, tensors: tuple[TensorConfig, ...], shapes: list[tuple[int, ...]]) -> list[TensorSpec]:
        """Manifest entries: each axis is its symbolic name where dynamic, else its export size."""
        return [
            TensorSpec(
                name=spec.name,
                dtype=spec.dtype,
                shape=[spec.dynamic_axes.get(axis, size) for axis, size in enumerate(shape)],
            )
            for spec, shape in zip(tensors, shapes)
        ]
