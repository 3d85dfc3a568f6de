"""Session creation: a CUDA request that ONNX Runtime silently serves on the CPU is refused; OpenVINO's
runtime answers through the same calls as an ONNX Runtime session, concurrently from many threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from services.loading import PROBE_MODEL
from services.runtime import CPU, CUDA, OPENVINO, ProviderUnavailableError, create_session


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


def test_openvino_answers_like_onnx_runtime_from_concurrent_threads(unet_run):
    """The tiny U-Net under both runtimes on the same images, OpenVINO called from 8 threads at once (each
    thread has its own infer request): every answer is its own image's, and matches ONNX Runtime's."""
    _, result = unet_run
    model = result.output_dir / "model.onnx"
    reference, openvino = create_session(model, provider="cpu"), create_session(model, provider="openvino")
    assert openvino.get_providers() == [OPENVINO]
    assert [i.name for i in openvino.get_inputs()] == [i.name for i in reference.get_inputs()]
    assert [o.name for o in openvino.get_outputs()] == [o.name for o in reference.get_outputs()]
    output = reference.get_outputs()[0].name
    images = np.random.default_rng(0).standard_normal((16, 1, 3, 64, 96), dtype=np.float32)
    expected = [reference.run([output], {"image": image})[0] for image in images]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda image: openvino.run([output], {"image": image})[0], images))
    # OpenVINO's default on CPUs with AMX runs float layers in bf16
    tolerance = 1e-3 if openvino.inference_precision == "f32" else 5e-2
    for got, want in zip(answers, expected):
        assert got.shape == want.shape
        assert np.abs(got - want).max() < tolerance * max(1.0, np.abs(want).max())
        assert (got.argmax(1) == want.argmax(1)).mean() > 0.999


def test_runs_of_one_served_model_at_once_are_limited(unet_run, monkeypatch):
    """Many request threads calling one served model: at most PIPELINES_RUNS_PER_MODEL of them are inside its
    session at any moment (each run holds its own activations), and that many do run together."""
    from services.loading import ServedModel

    _, result = unet_run
    monkeypatch.setenv("PIPELINES_PROVIDER", "cpu")
    monkeypatch.setenv("PIPELINES_RUNS_PER_MODEL", "2")
    model = ServedModel.load("unet:test", result.output_dir, "unet")
    real_run, lock, inside, most = model.session.run, threading.Lock(), [0], [0]

    def counted_run(names, feeds):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return real_run(names, feeds)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(model.session, "run", counted_run)
    images = np.random.default_rng(0).standard_normal((24, 1, 3, 64, 96), dtype=np.float32)
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda image: model.run({"image": image}), images))
    assert len(outputs) == 24 and most[0] == 2
