"""Loading a registered model for serving: files from the model store, manifest, ONNX Runtime session."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


# Tasks whose inference endpoint batches concurrent calls (BentoML adaptive batching) unless
# PIPELINES_BATCHING says otherwise; chosen by benchmarks/bench_serving.py (README, results log).
BATCHING_BY_DEFAULT: tuple[str, ...] = ()
BATCHABLE_TASKS = ("siamese", "text", "tabular")
# BentoML recycles the connection to a dependency after 100 requests or 300 s by default, closing the
# session under calls still in flight (reported to break calls between services under load; not
# reproduced here, README's results log); a task service keeps its connection open instead.
RUNNER_CONNECTION = {"max_requests": 1_000_000_000, "max_age": 1e9}


def batching_enabled(task: str) -> bool:
    """Whether `task`'s inference endpoint is batchable: PIPELINES_BATCHING is `auto` (the measured
    default), `none`, `all`, or a comma-separated list of tasks."""
    raw = os.environ.get("PIPELINES_BATCHING", "auto").strip().lower()
    if raw == "auto":
        chosen = set(BATCHING_BY_DEFAULT)
    elif raw == "none":
        chosen = set()
    elif raw == "all":
        chosen = set(BATCHABLE_TASKS)
    else:
        chosen = {name.strip() for name in raw.split(",") if name.strip()}
        unknown = chosen - set(BATCHABLE_TASKS)
        if unknown:
            raise ValueError(f"PIPELINES_BATCHING names {', '.join(sorted(unknown))}; batchable tasks are "
                             f"{', '.join(BATCHABLE_TASKS)} (or auto, none, all)")
    return task in chosen


class TaskHandler:
    """Turns requests into model inputs and model outputs into responses, around the task's inference
    endpoint, which runs in this process (a task service, or the one-process Bento) or in the task
    service's own process (a `bentoml.depends` dependency of the composed Bento).

    Subclasses name that endpoint in `INFER` and add the request methods.
    """

    INFER: str = ""

    def __init__(self, manifest: Manifest, tag: str, infer: Callable, describe: Callable[[], dict]):
        self.manifest = manifest
        self.spec = manifest.preprocessing
        self.tag = tag
        self.infer = infer
        self.describe = describe

    @classmethod
    def local(cls, service: Any) -> "TaskHandler":
        """Around a task service instance in this process (its `model`, inference method and model_info)."""
        return cls(service.model.manifest, service.model.tag, getattr(service, cls.INFER), service.model_info)

    @classmethod
    def remote(cls, stored_model: Any, dependency: Any) -> "TaskHandler":
        """Around a dependency: the manifest from the pinned model, inference and info over its API."""
        # Through `call`: the proxy's endpoint attributes exist only once BentoML has connected it.
        return cls(Manifest.read(Path(stored_model.path)), str(stored_model.tag),
                   functools.partial(dependency.call, cls.INFER), functools.partial(dependency.call, "model_info"))

    @functools.cached_property
    def provider(self) -> str:
        return self.describe()["provider"]
