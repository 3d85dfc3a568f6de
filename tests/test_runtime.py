"""ONNX Runtime session creation: a CUDA request that ONNX Runtime silently serves on the CPU is refused."""

import onnxruntime as ort
import pytest

from services.loading import PROBE_MODEL
from services.runtime import CPU, CUDA, ProviderUnavailableError, create_session


def test_cuda_that_fell_back_to_the_cpu_is_refused(monkeypatch):
    """This onnxruntime has no CUDA; made to list it, the real session it creates still runs on the CPU,
    which is ONNX Runtime's silent fallback (missing CUDA or cuDNN libraries): the session is refused."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *args, **kwargs: None, raising=False)
    with pytest.raises(ProviderUnavailableError, match="fell back to CPUExecutionProvider"):
        create_session(PROBE_MODEL, provider="cuda")


def test_auto_takes_the_cpu_where_there_is_no_cuda():
    session = create_session(PROBE_MODEL, provider="auto")
    assert session.get_providers()[0] == CPU
