"""Loading a registered model for serving: files from the model store, manifest, ONNX Runtime (or OpenVINO)
session."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from services.batching import GreedyBatcher, configured_batching, max_batch
from services.manifest import INT8_MODEL_FILE, MODEL_FILE, PARITY_FILE, Manifest, file_sha256
from services.messages import message_line
from services.runtime import (
    OpenVINOSession, ProviderUnavailableError, configured_precision, configured_provider, configured_request_threads,
    configured_runs_per_model, configured_threads, cpu_name, create_session, providers_for, runs_on_cpu, this_machine,
)

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
    configured_request_threads()
    configured_runs_per_model()
    configured_precision()
    configured_batching()
    max_batch()
    provider = configured_provider()
    providers_for(provider)
    if provider == "cuda":
        create_session(PROBE_MODEL, provider="cuda")
    if provider == "openvino":
        if configured_precision() == "fp32":
            raise ProviderUnavailableError("PIPELINES_PROVIDER=openvino serves int8 models (those that passed their "
                                           "gate under OpenVINO); with PIPELINES_PRECISION=fp32 it would serve none: "
                                           "set PIPELINES_PRECISION to auto or int8, or PIPELINES_PROVIDER to cpu")
        create_session(PROBE_MODEL, provider="openvino")


def model_tag(task: str) -> str:
    """The model a service loads: `<TASK>_MODEL_TAG` (for example SIAMESE_MODEL_TAG), else `<task>:latest`;
    in a built Bento, `NAME:latest` is the version the Bento was built with."""
    return version_in_bento(os.environ.get(f"{task.upper()}_MODEL_TAG", f"{task}:latest"))


# A built Bento holds its sources in <bento>/src/ beside bento.yaml, which lists the models it pinned.
BENTO_INFO = Path(__file__).resolve().parents[2] / "bento.yaml"


def version_in_bento(tag: str) -> str:
    """`NAME:latest` (or `NAME`) as the version the running Bento was built with. BentoML resolves `latest`
    against the whole model store, so without this a Bento served on a machine where `latest` has moved
    since the build would serve the newer model."""
    name, _, version = tag.partition(":")
    if version not in ("", "latest") or not BENTO_INFO.is_file():
        return tag
    import yaml

    info = yaml.safe_load(BENTO_INFO.read_text()) or {}
    models = [*(info.get("models") or []), *(m for svc in info.get("services") or [] for m in svc.get("models") or [])]
    pinned = [str(model["tag"]) for model in models if str(model.get("tag", "")).split(":")[0] == name]
    return pinned[0] if pinned else tag


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
        found = check_stored_model(str(stored.tag), Path(stored.path)).task
        if found != task:
            raise WrongTaskError(f"model {stored.tag} is a {found!r} model; the {task} service serves {task!r} "
                                 f"models (set {task.upper()}_MODEL_TAG to one)")
        model_file(str(stored.tag), Path(stored.path), configured_precision(), configured_provider())
    return model


class DamagedModelError(RuntimeError):
    """A model in the store whose files are not the ones registered (truncated, edited, unreadable)."""


def check_stored_model(tag: str, folder: Path) -> Manifest:
    """The stored model's manifest, after checking that its ONNX files are the bytes parity verified (the
    SHA-256 parity.json recorded): a damaged copy stops the start with one line instead of failing in
    every worker."""
    import json

    try:
        manifest = Manifest.read(folder)
    except Exception as error:
        raise DamagedModelError(f"model {tag}: its manifest.json cannot be read ({message_line(error)}); "
                                "register the artifact again") from None
    try:
        parity = json.loads((folder / PARITY_FILE).read_text())
    except (OSError, ValueError):
        raise DamagedModelError(f"model {tag}: its {PARITY_FILE} is missing or unreadable; register the artifact "
                                "again") from None
    expected = {MODEL_FILE: parity.get("model_sha256")}
    if (folder / INT8_MODEL_FILE).is_file():
        expected[INT8_MODEL_FILE] = (parity.get("int8") or {}).get("sha256")
    for name, checksum in expected.items():
        if file_sha256(folder / name) != checksum:
            raise DamagedModelError(f"model {tag}: {name} is not the file that was verified (its SHA-256 differs: "
                                    "truncated or edited in the store); register the artifact again")
    return manifest


def service_model(task: str):
    """What every service module does at import, in `bentoml serve`'s own process, so that a bad
    configuration stops the start with one message: check the provider and precision settings, make
    BentoML's multipart parser answer 400 to a file under an unexpected field name and to text where a file
    belongs, and pin the model."""
    from services.uploads import guard_multipart_parsing

    check_provider_configuration()
    guard_multipart_parsing()
    return pinned_model(task)


def model_file(tag: str, folder: Path, precision: str, provider: str = "cpu") -> tuple[Path, str, str]:
    """The ONNX file to serve, its precision, and the provider choice its session is created with.

    model.int8.onnx is in a stored model only when it passed its accuracy gate (`pipelines quantize`, then
    `register`); `auto` takes it on the CPU. `openvino` serves it with OpenVINO where parity.json records
    that it passed the same gate under OpenVINO, else (precision auto) with ONNX Runtime on the CPU."""
    folder = Path(folder)
    int8 = folder / INT8_MODEL_FILE
    if precision == "int8" and not int8.is_file():
        raise ProviderUnavailableError(f"PIPELINES_PRECISION=int8 but model {tag} has no int8 model that passed its "
                                       "gate (run `pipelines quantize` on its artifact, then register it again), "
                                       "or set PIPELINES_PRECISION=auto")
    if provider == "openvino":
        if int8.is_file() and passed_under_openvino(folder):
            return int8, "int8", "openvino"
        if precision == "int8":
            raise ProviderUnavailableError(f"PIPELINES_PROVIDER=openvino with PIPELINES_PRECISION=int8, but model {tag}'s "
                                           "int8 model has not passed its gate under OpenVINO (run `pipelines quantize` "
                                           "with OpenVINO installed, then register again), or set "
                                           "PIPELINES_PRECISION=auto to serve it with ONNX Runtime")
        provider = "cpu"
    if precision == "int8" or (precision == "auto" and int8.is_file() and runs_on_cpu(provider)):
        return int8, "int8", provider
    return folder / MODEL_FILE, "fp32", provider


def int8_verdict(folder: Path) -> dict:
    """parity.json's int8 section (empty where there is none or the file cannot be read)."""
    import json

    try:
        section = json.loads((Path(folder) / PARITY_FILE).read_text()).get("int8")
    except (OSError, ValueError, AttributeError):
        return {}
    return section if isinstance(section, dict) else {}


def passed_under_openvino(folder: Path) -> bool:
    """Whether parity.json records the int8 model passing its gate under OpenVINO as well."""
    return bool((int8_verdict(folder).get("openvino") or {}).get("passed"))


def openvino_judged_precision(verdict: dict) -> str | None:
    """The float precision OpenVINO ran the int8 file's float layers in when it was judged (verdicts from
    before the field existed name it in their runtime string: 'OpenVINO 2026.4.1 CPU (f32 inference)')."""
    openvino = verdict.get("openvino") or {}
    if openvino.get("inference_precision"):
        return openvino["inference_precision"]
    found = re.search(r"\((\w+) inference\)", str(openvino.get("runtime", "")))
    return found.group(1) if found else None


def warn_if_judged_where_results_can_differ(tag: str, folder: Path, provider_choice: str,
                                            openvino_precision: str | None = None) -> dict | None:
    """The machine the int8 verdict was judged on; a warning in the log where serving on this CPU may not
    compute what was judged: under OpenVINO, on other int8 kernels (services.runtime.int8_kernels) or where
    OpenVINO runs the float layers in another precision (bf16 on CPUs with bf16 instructions, AMX or
    AVX-512 BF16, f32 elsewhere: two VNNI CPUs can differ); under ONNX Runtime, only for files quantized with
    8-bit weights (before `pipelines quantize` took 7), whose sums can overflow on CPUs without VNNI.
    Verdicts from before the machine was recorded: None, no warning."""
    verdict = int8_verdict(folder)
    judged_on = verdict.get("judged_on")
    if not isinstance(judged_on, dict) or not judged_on:
        return None
    here = this_machine()
    same_kernels = judged_on.get("int8_kernels") == here["int8_kernels"]
    if provider_choice == "openvino":
        judged_precision = openvino_judged_precision(verdict)
        differences = [] if same_kernels else ["int8 kernels"]
        if judged_precision and openvino_precision and judged_precision != openvino_precision:
            differences.append(f"float layers in {judged_precision} there, {openvino_precision} here")
        if not differences:
            return judged_on
        why, instead = f"OpenVINO computes differently on them ({'; '.join(differences)})", "PIPELINES_PROVIDER=cpu"
    elif same_kernels:
        return judged_on
    elif not isinstance(verdict.get("weight_bits"), int) or verdict["weight_bits"] > 7:
        why, instead = ("its 8-bit weights can overflow 16-bit sums on CPUs without VNNI (quantized before "
                        "`pipelines quantize` took 7-bit weights)"), "PIPELINES_PRECISION=fp32"
    else:
        return judged_on
    logger.warning("model %s: its int8 verdict was judged on %s (int8 kernels: %s) and this CPU is %s (%s): %s; "
                   "run `pipelines quantize` on this kind of machine and register again to judge it here, or set %s",
                   tag, cpu_name(judged_on), judged_on.get("int8_kernels"), cpu_name(here), here["int8_kernels"], why,
                   instead)
    return judged_on


@dataclass
class ServedModel:
    tag: str
    manifest: Manifest
    session: ort.InferenceSession | OpenVINOSession
    provider: str
    precision: str = "fp32"
    int8_judged_on: dict | None = None

    @classmethod
    def from_store(cls, stored, expected_task: str) -> "ServedModel":
        """From a BentoML stored model (what a service's `bentoml.models.BentoModel` attribute resolves to)."""
        return cls.load(str(stored.tag), Path(stored.path), expected_task)

    @classmethod
    def load(cls, tag: str, folder: Path, expected_task: str) -> "ServedModel":
        manifest = Manifest.read(folder)
        if manifest.task != expected_task:
            raise WrongTaskError(f"model {tag} is a {manifest.task!r} model, this service serves {expected_task!r}")
        configured = configured_provider()
        path, precision, choice = model_file(tag, folder, configured_precision(), configured)
        session = create_session(path, provider=choice, threads=configured_threads())
        provider = session.get_providers()[0]
        logger.info("serving %s (%s) with %s%s", tag, precision, provider,
                    " (its int8 model was not verified under OpenVINO)" if configured != choice else "")
        judged_on = warn_if_judged_where_results_can_differ(
            tag, folder, choice, getattr(session, "inference_precision", None)) if precision == "int8" else None
        return cls(tag=tag, manifest=manifest, session=session, provider=provider, precision=precision,
                   int8_judged_on=judged_on)

    def __post_init__(self) -> None:
        limit = configured_runs_per_model()
        self.runs_at_once = threading.BoundedSemaphore(limit) if limit else contextlib.nullcontext()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.runs_at_once:
            return self.session.run([self.manifest.outputs[0].name], feeds)[0]

    def info(self) -> dict:
        return {
            "model": self.tag,
            "task": self.manifest.task,
            "provider": self.provider,
            "precision": self.precision,
            **({"int8_judged_on": self.int8_judged_on} if self.int8_judged_on else {}),
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
    # Whether concurrent requests' inputs are stacked into one run (services/batching.py), by measurement.
    batches_concurrent_requests: bool = False

    def __init__(self, model: ServedModel):
        self.model = model
        self.manifest = model.manifest
        self.spec = model.manifest.preprocessing
        self.tag = model.tag
        self.provider = model.provider
        self.precision = model.precision
        self.batching = self.batches_concurrent_requests and configured_batching() == "auto"
        self.batcher = GreedyBatcher(self.infer, max_batch()) if self.batching else None

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer_one(self, item: np.ndarray) -> np.ndarray:
        """The model's output for one preprocessed input (no batch axis): batched with concurrent
        requests where the task batches, else run alone."""
        return self.batcher(item) if self.batcher is not None else self.infer(item[None])[0]

    @classmethod
    def from_store(cls, stored) -> "TaskHandler":
        """From the BentoML stored model a service's `bentoml.models.BentoModel` attribute resolves to;
        refuses a model of another task, naming both."""
        return cls(ServedModel.from_store(stored, cls.task))

    def served_by(self) -> dict:
        """The model version, provider and precision every response carries."""
        return {"model": self.tag, "provider": self.provider, "precision": self.precision}

    def describe(self) -> dict:
        """The model version, provider, inputs, outputs, labels and training metrics (`/model_info`, `/models`)."""
        return {**self.model.info(), "batching_concurrent_requests": self.batching,
                "request_threads": configured_request_threads(), "runs_per_model": configured_runs_per_model()}


@dataclass(frozen=True)
class ServedTask:
    """One task's serving side, as the registry (services/registry.py) lists it."""

    name: str
    model: Any  # the bentoml.models.BentoModel the services pin at build
    handler: type[TaskHandler]
    endpoints: type  # a mixin of the task's public endpoints under /<task>/, for the all-models Bento
    service: Any  # the single-task BentoML service (bentofile.<task>.yaml)

    def __post_init__(self) -> None:
        from services.conventions import ServingConventions

        self.service.add_asgi_middleware(ServingConventions)
