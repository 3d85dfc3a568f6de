"""`bentoml build` of the top-level bentofile: the Bento pins the registered model and ships no torch."""

import os
import subprocess

import bentoml
import pytest
import yaml

from tests.helpers import BENTOML, REPO

pytestmark = pytest.mark.slow


def build(bentofile: str):
    completed = subprocess.run(
        [BENTOML, "build", "-f", bentofile, "--output", "tag"], cwd=REPO, env=os.environ, capture_output=True,
        text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return bentoml.get(completed.stdout.strip().splitlines()[-1].replace("__tag__:", ""))


def check_container_context(bento) -> None:
    """The Docker build context `bentoml build` writes: slim Python base, the serving port, a non-root
    user, and an install list with ONNX Runtime and without torch or fastai. (No Docker engine runs
    here; `bentoml containerize` builds it elsewhere.)"""
    with open(bento.path_of("env/docker/Dockerfile")) as handle:
        dockerfile = handle.read()
    assert "FROM python:3.11-slim" in dockerfile
    assert "EXPOSE 3000" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] != "root"
    assert os.path.isfile(bento.path_of("env/docker/entrypoint.sh"))
    with open(bento.path_of("env/python/requirements.txt")) as handle:
        packages = [line.strip().lower() for line in handle if line.strip() and not line.startswith("#")]
    assert any(p.startswith("onnxruntime") and not p.startswith("onnxruntime-gpu") for p in packages)
    assert not any(p.startswith(("torch", "fastai", "onnxruntime-gpu")) for p in packages)


def test_bentoml_build_pins_model_and_excludes_torch(siamese_run):
    _, result = siamese_run
    bento = build("bentofile.yaml")
    assert [str(model.tag) for model in bento.info.all_models] == [result.tag]
    requirements = (bento.path_of("env/python/requirements.txt"))
    with open(requirements) as handle:
        packages = handle.read().lower()
    assert "onnxruntime" in packages
    assert "torch" not in packages and "fastai" not in packages
    check_container_context(bento)
    sources = {path for path in os.listdir(bento.path_of("src/services"))}
    assert "siamese.py" in sources and "images.py" in sources
    with open(bento.path_of("bento.yaml")) as handle:
        assert yaml.safe_load(handle)["service"] == "services.siamese:SiameseService"


@pytest.mark.parametrize("task, service", [("tabular", "TabularService"), ("unet", "UnetService"), ("text", "TextService")])
def test_task_bento_pins_its_model_without_torch(task, service, request):
    _, result = request.getfixturevalue(f"{task}_run")
    bento = build(f"bentofile.{task}.yaml")
    assert [str(model.tag) for model in bento.info.all_models] == [result.tag]
    with open(bento.path_of("env/python/requirements.txt")) as handle:
        packages = handle.read().lower()
    assert "onnxruntime" in packages
    assert "torch" not in packages and "fastai" not in packages and "pandas" not in packages
    with open(bento.path_of("bento.yaml")) as handle:
        assert yaml.safe_load(handle)["service"] == f"services.{task}:{service}"
    check_container_context(bento)
