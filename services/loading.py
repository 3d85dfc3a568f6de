"""Loading a registered model for serving: files from the model store, manifest, ONNX Runtime session."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from services.manifest import MODEL_FILE, Manifest
from services.runtime import configured_provider, configured_threads, create_session, providers_for

logger = logging.getLogger("bentoml.service")


# A one-node ONNX model (Identity), to try a session with the configured provider before any model loads.
PROBE_MODEL = bytes.fromhex(
    "080812003a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a0a08080112040a020801620f0a0179"
    "120a0a08080112040a02080142040a00100d"
)


def check_provider_configuration() -> None:
    """Fail at import, in `bentoml serve`'s own process, when the configured provider cannot be used here.

    A worker that fails later is restarted by BentoML again and again; failing at import makes the
    server exit with the message instead. With PIPELINES_PROVIDER=cuda a probe session is created, so
    missing CUDA or cuDNN libraries (ONNX Runtime's silent fallback to the CPU) stop the start too.
    """
    configured_threads()
    provider = configured_provider()
    providers_for(provider)
    if provider == "cuda":
        create_session(PROBE_MODEL, provider="cuda")


def model_tag(task: str) -> str:
    """The model a service loads: `<TASK>_MODEL_TAG` (for example SIAMESE_MODEL_TAG), else `<task>:latest`."""
    return os.environ.get(f"{task.upper()}_MODEL_TAG", f"{task}:latest")


class WrongTaskError(RuntimeError):
    """The model a service was given is of another task."""


def pinned_model(task: str):
    """The BentoML model reference a task's services pin (`model_tag`). Where the model is already in
    the store, its manifest is checked at import, in `bentoml serve`'s own process, so that a model of
    another task stops the start with one message instead of failing every worker."""
    import bentoml

    model = bentoml.models.BentoModel(model_tag(task))
    stored = model.stored
    if stored is not None:
        found = Manifest.read(Path(stored.path)).task
        if found != task:
            raise WrongTaskError(f"model {stored.tag} is a {found!r} model; the {task} service serves {task!r} "
                                 f"models (set {task.upper()}_MODEL_TAG to one)")
    return model


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
            raise WrongTaskError(f"model {tag} is a {manifest.task!r} model, this service serves {expected_task!r}")
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


class TaskHandler:
    """One task's request handling in the serving process: request -> model inputs -> ONNX Runtime ->
    response. The task service and the all-models Bento both answer through it.

    Subclasses set `task`, and add `infer` (model inputs to outputs) and the request methods.
    """

    task: str = ""

    def __init__(self, model: ServedModel):
        self.model = model
        self.manifest = model.manifest
        self.spec = model.manifest.preprocessing
        self.tag = model.tag
        self.provider = model.provider

    @classmethod
    def from_store(cls, stored) -> "TaskHandler":
        """From the BentoML stored model a service's `bentoml.models.BentoModel` attribute resolves to;
        refuses a model of another task, naming both."""
        return cls(ServedModel.from_store(stored, cls.task))

    def describe(self) -> dict:
        """The model version, provider, inputs, outputs, labels and training metrics (`/model_info`, `/models`)."""
        return self.model.info()


@dataclass(frozen=True)
class ServedTask:
    """One task's serving side, as the registry (services/registry.py) lists it."""

    name: str
    model: Any  # the bentoml.models.BentoModel the services pin at build
    handler: type[TaskHandler]
    endpoints: type  # a mixin of the task's public endpoints under /<task>/, for the all-models Bento
    service: Any  # the single-task BentoML service (bentofile.<task>.yaml)
