"""Loading a registered model for serving: files from the model store, manifest, ONNX Runtime session."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.manifest import MODEL_FILE, Manifest
from services.runtime import configured_provider, configured_threads, create_session, providers_for

logger = logging.getLogger("bentoml.service")


def check_provider_configuration() -> None:
    """Fail at import, in `bentoml serve`'s own process, when the configured provider cannot exist here.

    A worker that fails later is restarted by BentoML again and again; failing at import makes the
    server exit with the message instead. (Whether CUDA then really runs is checked per session.)
    """
    configured_threads()
    providers_for(configured_provider())


def model_tag(task: str) -> str:
    """The model a service loads: `<TASK>_MODEL_TAG` (for example SIAMESE_MODEL_TAG), else `<task>:latest`."""
    return os.environ.get(f"{task.upper()}_MODEL_TAG", f"{task}:latest")


@dataclass
class ServedModel:
    tag: str
    manifest: Manifest
    session: ort.InferenceSession
    provider: str

    @classmethod
    def from_store(cls, stored, expected_task: str) -> "ServedModel":
        """From a BentoML stored model (what a service's `bentoml.models.BentoModel` attribute resolves to)."""
        return cls.load(str(stored.tag), Path(stored.path), expected_task)

    @classmethod
    def load(cls, tag: str, folder: Path, expected_task: str) -> "ServedModel":
        manifest = Manifest.read(folder)
        if manifest.task != expected_task:
            raise RuntimeError(f"model {tag} is a {manifest.task!r} model, this service serves {expected_task!r}")
        session = create_session(Path(folder) / MODEL_FILE, provider=configured_provider(), threads=configured_threads())
        provider = session.get_providers()[0]
        logger.info("serving %s with ONNX Runtime provider %s", tag, provider)
        return cls(tag=tag, manifest=manifest, session=session, provider=provider)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.manifest.outputs[0].name], feeds)[0]

    def info(self) -> dict:
        return {
            "model": self.tag,
            "task": self.manifest.task,
            "provider": self.provider,
            "inputs": [spec.model_dump() for spec in self.manifest.inputs],
            "outputs": [spec.model_dump() for spec in self.manifest.outputs],
            "labels": self.manifest.labels,
            "metrics": self.manifest.metrics.get("training", {}),
        }


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)
