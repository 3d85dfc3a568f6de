"""Shared fixtures. BENTOML_HOME and the data cache point into a temporary folder for the whole run,
set before bentoml is imported anywhere."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_RUN_DIR = Path(tempfile.mkdtemp(prefix="pipelines-tests-"))
os.environ["BENTOML_HOME"] = str(_RUN_DIR / "bentoml")
os.environ.setdefault("PIPELINES_CACHE", str(_RUN_DIR / "cache"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RUN_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def run_dir() -> Path:
    return _RUN_DIR


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(os.environ["BENTOML_HOME"])


TINY_SIAMESE_OPTIONS = dict(
    label_from="filename", label_pattern=r"^(.*)_\d+.jpg$", image_size=32, arch="resnet18", pretrained="no",
    frozen_epochs=1, unfrozen_lr=(1e-6, 1e-4), epochs=1, lr=3e-3, batch_size=32, seed=42, register=True,
)


@pytest.fixture(scope="session")
def digits_folder(run_dir) -> Path:
    from pipelines.data import digits_image_folder
    from tests.helpers import digits_subset

    return digits_subset(digits_image_folder(), run_dir / "digits_small", per_class=30)


@pytest.fixture(scope="session")
def siamese_run(run_dir, digits_folder):
    """A tiny Siamese model trained for seconds, exported, parity-checked and registered."""
    from pipelines.registry import get_task
    from pipelines.run import train_and_export

    task = get_task("siamese")
    options = dict(TINY_SIAMESE_OPTIONS, data=str(digits_folder), output=run_dir / "siamese_run")
    result = train_and_export(task, options)
    return task, result
