"""End to end: a real `bentoml serve` of the Siamese service on a loopback port, called over HTTP."""

import bentoml
import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import bentoml_server, image_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(siamese_run):
    with bentoml_server("services.siamese:SiameseService", env={"PIPELINES_PROVIDER": "cpu"}) as url:
        yield url


def fastai_probability_same(task, learn, first, second) -> float:
    probabilities, _ = learn.get_preds(dl=task.pair_test_dl(learn.dls, [(first, second)]))
    return float(probabilities[0, 1])


def pair_files(result, tmp_path):
    """A same-class and a different-class pair of raw files, one converted to PNG and resized."""
    files = sorted(p for p in result.learn.dls.valid.items)
    first = files[0]
    same = next(f for f in files[1:] if f.name.rsplit("_", 1)[0] == first.name.rsplit("_", 1)[0])
    other = next(f for f in files if f.name.rsplit("_", 1)[0] != first.name.rsplit("_", 1)[0])
    upscaled = tmp_path / "upscaled.png"
    Image.open(other).resize((57, 41)).save(upscaled)
    return [(first, same), (first, upscaled)]


def test_served_probability_equals_fastai_prediction(siamese_run, server, tmp_path):
    task, result = siamese_run
    client = bentoml.SyncHTTPClient(server)
    try:
        for first, second in pair_files(result, tmp_path):
            answer = client.predict(image_a=first, image_b=second)
            expected = fastai_probability_same(task, result.learn, first, second)
            assert abs(answer["probability_same"] - expected) <= 1e-4, (first.name, second.name)
            assert answer["same"] == (expected > 0.5)
            assert answer["probabilities"]["same"] == pytest.approx(answer["probability_same"])
            assert answer["model"] == result.tag
            assert answer["provider"] == "CPUExecutionProvider"
    finally:
        client.close()


def test_raw_multipart_post_and_model_info(siamese_run, server):
    _, result = siamese_run
    first, second = sorted(result.learn.dls.valid.items)[:2]
    with open(first, "rb") as a, open(second, "rb") as b:
        response = requests.post(f"{server}/predict", files={"image_a": a, "image_b": b}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["probability_same"] <= 1.0
    info = requests.post(f"{server}/model_info", json={}, timeout=30).json()
    assert info["provider"] == "CPUExecutionProvider"
    assert info["model"] == result.tag
    assert info["inputs"][0]["name"] == "image_a"


@pytest.mark.parametrize(
    "upload, message",
    [
        (b"", "image_b: the upload is empty"),
        (b"GIF89a not really", "image_b: "),
        (b"plain text", "image_b: not a recognised image format"),
    ],
)
def test_bad_upload_is_400_naming_the_field_and_server_keeps_serving(siamese_run, server, upload, message):
    _, result = siamese_run
    good = sorted(result.learn.dls.valid.items)[0].read_bytes()
    response = requests.post(
        f"{server}/predict", files={"image_a": ("a.jpg", good), "image_b": ("b.jpg", upload)}, timeout=30
    )
    assert response.status_code == 400
    assert message in response.text
    after = requests.post(f"{server}/predict", files={"image_a": ("a.jpg", good), "image_b": ("b.jpg", good)}, timeout=30)
    assert after.status_code == 200
    assert after.json()["probability_same"] > 0


def test_truncated_jpeg_and_missing_field_are_400(siamese_run, server):
    _, result = siamese_run
    good = sorted(result.learn.dls.valid.items)[0].read_bytes()
    big = image_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)), "JPEG")
    truncated = requests.post(
        f"{server}/predict", files={"image_a": ("a.jpg", big[: len(big) // 3]), "image_b": ("b.jpg", good)}, timeout=30
    )
    assert truncated.status_code == 400 and "image_a" in truncated.text
    missing = requests.post(f"{server}/predict", files={"image_a": ("a.jpg", good)}, timeout=30)
    assert missing.status_code == 400 and "image_b" in missing.text


def test_readyz_and_metrics(server):
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200
    metrics = requests.get(f"{server}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "bentoml_service_request" in metrics.text


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"PIPELINES_PROVIDER": "cuda"}, "CUDA was requested but this onnxruntime has no CUDAExecutionProvider"),
        ({"PIPELINES_PROVIDER": "gpu"}, "PIPELINES_PROVIDER='gpu' is not one of cpu, cuda, openvino, auto"),
        ({"PIPELINES_PROVIDER": "openvino", "PIPELINES_PRECISION": "fp32"},
         "PIPELINES_PROVIDER=openvino serves int8 models"),
        ({"PIPELINES_REQUEST_THREADS": "0"}, "PIPELINES_REQUEST_THREADS=0 must be 1 or more"),
        ({"PIPELINES_RUNS_PER_MODEL": "-1"}, "PIPELINES_RUNS_PER_MODEL=-1 must be 0 or more"),
        ({"PIPELINES_MAX_BATCH": "many"}, "PIPELINES_MAX_BATCH='many' is not an integer"),
    ],
)
def test_unusable_setting_refuses_to_start_with_a_clear_message(siamese_run, setting, message):
    import os
    import subprocess

    import onnxruntime

    from tests.helpers import BENTOML, REPO, free_port

    if setting.get("PIPELINES_PROVIDER") == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a CUDA provider")
    completed = subprocess.run(
        [BENTOML, "serve", "services.siamese:SiameseService", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=REPO, env={**os.environ, **setting}, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0
    assert message in completed.stdout + completed.stderr
