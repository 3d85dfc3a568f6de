"""Faults: a damaged model in the store stops the start with one line naming it; two registrations at once
both land intact; SIGTERM under load lets in-flight requests finish."""

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest

from services.loading import check_stored_model
from services.manifest import MODEL_FILE
from tests.helpers import BENTOML, REPO, bentoml_server, free_port
from tests.test_cli import PIPELINES, run_cli

pytestmark = pytest.mark.slow


def serve_once(target: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(free_port())], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage,message", [
    (lambda folder: (folder / MODEL_FILE).write_bytes((folder / MODEL_FILE).read_bytes()[:1000]),
     "model.onnx is not the file that was verified"),
    (lambda folder: (folder / "manifest.json").write_text('{"task": "tabular", "schema_version": 1, "inputs": ['),
     "its manifest.json cannot be read"),
])
def test_a_damaged_model_stops_the_start_with_one_line_naming_it(tabular_run, damage, message):
    _, result = tabular_run
    name = f"tabular-damaged-{'model' if 'onnx' in message else 'manifest'}"
    assert run_cli("register", str(result.output_dir), "--name", name).returncode == 0
    stored = bentoml.models.get(f"{name}:latest")
    damage(Path(stored.path))
    completed = serve_once("services.tabular:TabularService", {"TABULAR_MODEL_TAG": f"{name}:latest"})
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert f"model {stored.tag}: {message}" in output, output[-3000:]


def test_two_registrations_at_once_both_land_intact_and_latest_is_the_later(tabular_run):
    _, result = tabular_run
    processes = [subprocess.Popen([PIPELINES, "register", str(result.output_dir), "--name", "tabular-race"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    versions = bentoml.models.list("tabular-race")
    assert len(versions) == 2
    for model in versions:
        check_stored_model(str(model.tag), Path(model.path))  # every file the one verified
    latest = bentoml.models.get("tabular-race:latest")
    assert latest.info.creation_time == max(model.info.creation_time for model in versions)


def test_sigterm_lets_in_flight_requests_finish(unet_run, tmp_path):
    from PIL import Image

    image = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(image)
    payload = image.read_bytes()
    with bentoml_server("services.unet:UnetService", env={"PIPELINES_PROVIDER": "cpu"}) as url:
        def call():
            return httpx.post(f"{url}/summary", files={"image": ("big.png", payload)}, timeout=120).status_code

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call) for _ in range(8)]
            time.sleep(1.0)
            os.killpg(url.pid, signal.SIGTERM)
            statuses = [future.result(timeout=180) for future in futures]
    assert statuses == [200] * 8
