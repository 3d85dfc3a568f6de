"""Assembling the manifest (services/manifest.py defines it; export writes it)."""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata

import numpy as np

from export.config import OnnxConfig
from services.manifest import Manifest

PACKAGES = ("torch", "fastai", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "bentoml", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def build_manifest(task: str, config: OnnxConfig, example_inputs: tuple, example_outputs: list[np.ndarray],
                   labels: list[str], preprocessing, provenance: dict, metrics: dict, exporter: str) -> Manifest:
    """The manifest of an exported model: names, dtypes and shapes (dynamic axes by name) of its inputs and
    outputs, its labels and preprocessing, and where it came from."""
    return Manifest(
        task=task,
        inputs=config.tensor_specs(config.inputs, [tuple(t.shape) for t in example_inputs]),
        outputs=config.tensor_specs(config.outputs, [o.shape for o in example_outputs]),
        labels=labels,
        preprocessing=preprocessing,
        provenance={
            **provenance,
            "packages": package_versions(),
            "opset": config.opset,
            "exporter": exporter,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        metrics=metrics,
    )
