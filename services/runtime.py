"""ONNX Runtime session creation, shared by the services and by export's parity check.

The parity check builds its session with this very function so that what was verified is what is
served (same graph optimisation level, same thread settings, same provider).
"""

from __future__ import annotations

import io
import logging
import os
import platform
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
import onnxruntime as ort

ProviderChoice = Literal["cpu", "cuda", "openvino", "auto"]
PROVIDER_CHOICES: tuple[str, ...] = ("cpu", "cuda", "openvino", "auto")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINO CPU"  # OpenVINO's own runtime (the `openvino` package), not an ONNX Runtime provider

logger = logging.getLogger(__name__)


# The instruction sets that decide int8 and fp32 speed on x86, best first: the same int8 file's speed-up
# differs by CPU (measured: the U-Net at 100x150, 1.40x fp32 on 2 Intel cores with AMX, 1.53x on 2 EPYC
# cores with AVX2 only).
SPEED_FEATURES = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """The CPU's model name and which of SPEED_FEATURES it has (Linux; elsewhere the platform's name)."""
    try:
        info = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return model, [feature for feature in SPEED_FEATURES if feature in flags]


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """'amd-f26m2', 'intel-f6m106': vendor, family and model as /proc/cpuinfo numbers them ('' elsewhere)."""
    try:
        info = cpuinfo.read_text()
    except OSError:
        return ""
    fields = {}
    for line in info.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(fields.get("vendor_id", ""), "")
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    if not (vendor and family.isdigit() and model.isdigit()):
        return ""
    return f"{vendor}-f{family}m{model}"


def int8_kernels(features: list[str], machine: str | None = None) -> str:
    """The kind of int8 arithmetic this CPU's kernels do: with AMX or VNNI the u8 x s8 products accumulate
    in 32 bits; without them (AVX2, AVX-512F) ONNX Runtime's u8s8 kernels add pairs of products in 16 bits,
    which 8-bit weights can overflow (`pipelines quantize` writes 7-bit ones), and OpenVINO on AMX runs
    float layers in bf16. An int8 verdict records it (parity.json `int8.judged_on`)."""
    machine = machine or platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return machine
    if "amx_int8" in features:
        return "amx"
    if "avx512_vnni" in features or "avx_vnni" in features:
        return "vnni"
    return "no-vnni"


def this_machine() -> dict:
    """What an int8 verdict records about the machine that judged it, and what serving compares it with."""
    model, features = cpu_features()
    return {"cpu": model, "cpu_id": cpu_identity(), "features": features, "int8_kernels": int8_kernels(features)}


def cpu_name(machine: dict) -> str:
    """A recorded machine's CPU as people read it: its model name, with vendor, family and model where recorded."""
    return f"{machine.get('cpu')} ({machine['cpu_id']})" if machine.get("cpu_id") else str(machine.get("cpu"))


class ProviderUnavailableError(RuntimeError):
    """The configuration asked for an execution provider that ONNX Runtime cannot use here."""


def configured_choice(variable: str, choices: tuple[str, ...], default: str) -> str:
    """A setting that takes one of `choices`, from the environment; anything else stops with one line."""
    choice = os.environ.get(variable, default).strip().lower()
    if choice not in choices:
        raise ProviderUnavailableError(f"{variable}={choice!r} is not one of {', '.join(choices)}")
    return choice


def configured_provider() -> str:
    """The provider choice from `PIPELINES_PROVIDER` (cpu, cuda, openvino or auto; default auto). openvino
    serves the int8 models that passed their gate under OpenVINO too (`pipelines quantize`), the others
    with ONNX Runtime on the CPU."""
    return configured_choice("PIPELINES_PROVIDER", PROVIDER_CHOICES, "auto")


PRECISION_CHOICES: tuple[str, ...] = ("fp32", "int8", "auto")


def configured_precision() -> str:
    """`PIPELINES_PRECISION`: fp32, int8 (refuse to start where a model has no int8 file that passed its
    gate) or auto (default: int8 where it passed its gate and the session runs on the CPU, else fp32)."""
    return configured_choice("PIPELINES_PRECISION", PRECISION_CHOICES, "auto")


def configured_count(variable: str, default: int, minimum: int) -> int:
    """A whole-number setting from the environment; anything else stops with one line."""
    raw = os.environ.get(variable, str(default))
    try:
        count = int(raw)
    except ValueError:
        raise ProviderUnavailableError(f"{variable}={raw!r} is not an integer") from None
    if count < minimum:
        raise ProviderUnavailableError(f"{variable}={count} must be {minimum} or more")
    return count


def configured_threads() -> int:
    """Intra-op threads per session (inference threads per OpenVINO model) from `PIPELINES_THREADS`; 0 lets the
    runtime decide."""
    return configured_count("PIPELINES_THREADS", 0, minimum=0)


def configured_request_threads() -> int:
    """How many requests a worker's endpoints handle at once (`PIPELINES_REQUEST_THREADS`, default 16).

    BentoML runs sync endpoints in a thread pool limited to the service's `threads`, 1 by default: one
    request at a time in the whole worker, so a slow U-Net request held up every other endpoint and the
    Siamese batcher never saw two requests at once. 16 lets concurrent requests decode in parallel, fill
    a batch of `PIPELINES_MAX_BATCH` (16), and run concurrently in ONNX Runtime (measured: allowing one
    run per model at a time instead cut the U-Net's requests per second under 8 clients by a quarter).
    Each request in flight holds its decoded input; the runs' activations are bounded by
    `configured_runs_per_model`."""
    return configured_count("PIPELINES_REQUEST_THREADS", 16, minimum=1)


def configured_runs_per_model() -> int:
    """How many inferences of one model run at once in a worker (`PIPELINES_RUNS_PER_MODEL`, default 2; 0: no
    limit). Each run holds its own activations while the request threads decode and preprocess in parallel:
    measured on 2 cores, 32 clients sending 640x480 images to the U-Net grew the worker to 10.3 GB with no
    limit and to 2.3 GB with 2, at the same requests per second (README, results log)."""
    return configured_count("PIPELINES_RUNS_PER_MODEL", 2, minimum=0)


def providers_for(choice: str) -> list[str]:
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "openvino":
        return [OPENVINO]
    if choice == "cuda":
        if CUDA not in available:
            raise ProviderUnavailableError(
                "CUDA was requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install the `gpu` extra "
                "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or set PIPELINES_PROVIDER=cpu"
            )
        return [CUDA, CPU]
    if choice == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ProviderUnavailableError(f"unknown provider choice {choice!r}")


def runs_on_cpu(choice: str) -> bool:
    """Whether ONNX Runtime sessions of this provider choice run on the CPU."""
    return choice == "cpu" or (choice == "auto" and CUDA not in ort.get_available_providers())


def session_options(threads: int = 0) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle intra-op threads would spin for work after each run; with one session per model in a process
    # (the Bento holds five), the spinning pools of the idle models take the cores from the busy one
    # (measured: Siamese int8 at batch 1 ran 1.2x fp32 with spinning, 2.4x without; README, results log).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


_openvino_core = None
_openvino_core_lock = threading.Lock()


def openvino_core(openvino):
    """The process's one OpenVINO `Core`, shared by every OpenVINO session: with a `Core` per session the test
    suite's process died of a segmentation fault after five had been created (DEVELOPERS.md), the crash that
    OpenVINO's issue #35338 reports for a second `Core` and that Ultralytics fixed by reusing one."""
    global _openvino_core
    with _openvino_core_lock:
        if _openvino_core is None:
            _openvino_core = openvino.Core()
        return _openvino_core


class OpenVINOSession:
    """OpenVINO's CPU runtime behind the part of ONNX Runtime's `InferenceSession` the project calls (`run`,
    `get_inputs`, `get_outputs`, `get_providers`), so that judging, serving and `pipelines bench` treat both
    alike. On a QDQ model.int8.onnx OpenVINO runs the quantized operators in int8 itself.

    An infer request runs one inference at a time: each calling thread gets its own (the services run
    concurrent requests in up to PIPELINES_REQUEST_THREADS threads)."""

    def __init__(self, model: Path | str | bytes, threads: int = 0):
        try:
            import openvino
        except ImportError:
            raise ProviderUnavailableError("OpenVINO was requested but it is not installed here: install the "
                                           "`openvino` extra (pip install openvino), or set PIPELINES_PROVIDER=cpu") from None
        core = openvino_core(openvino)
        config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        source = core.read_model(io.BytesIO(model)) if isinstance(model, bytes) else str(model)
        self.compiled = core.compile_model(source, "CPU", config)
        self.version = openvino.__version__.split("-")[0]
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._per_thread = threading.local()

    @staticmethod
    def _described(ports) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=port.get_any_name(), shape=str(port.get_partial_shape())) for port in ports]

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._described(self.compiled.inputs)

    def get_outputs(self) -> list[SimpleNamespace]:
        return self._described(self.compiled.outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._per_thread, "request", None)
        if request is None:
            request = self._per_thread.request = self.compiled.create_infer_request()
        results = request.infer(feeds)  # copies the outputs out of the request's buffers
        return [results[name] for name in output_names or [output.name for output in self.get_outputs()]]


def create_session(model: Path | str | bytes, provider: str = "cpu", threads: int = 0) -> ort.InferenceSession:
    """Create a session and check that the provider asked for is the one in use.

    ONNX Runtime silently falls back to the CPU when a CUDA session cannot be created (missing CUDA
    or cuDNN libraries, for example); a service that asked for CUDA must not quietly run on the CPU.
    `openvino` gives an OpenVINOSession, which has the same calls.
    """
    if provider == "openvino":
        return OpenVINOSession(model, threads)
    if provider in ("cuda", "auto") and hasattr(ort, "preload_dlls") and CUDA in ort.get_available_providers():
        ort.preload_dlls()
    providers = providers_for(provider)
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    in_use = session.get_providers()[0]
    if provider == "cuda" and in_use != CUDA:
        raise ProviderUnavailableError(
            f"CUDA was requested but ONNX Runtime fell back to {in_use}: "
            "check that the CUDA and cuDNN libraries matching onnxruntime-gpu are installed"
        )
    name = "an in-memory model" if isinstance(model, bytes) else Path(model).name
    logger.info("ONNX Runtime session for %s uses %s (asked: %s)", name, in_use, provider)
    return session
