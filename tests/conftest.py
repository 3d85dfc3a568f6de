"""Shared fixtures. BENTOML_HOME and the data cache point into a temporary folder for the whole run,
set before bentoml is imported anywhere."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Created once per test run; setting it again (a second import of this file) would move BENTOML_HOME.
if "PIPELINES_TEST_RUN_DIR" not in os.environ:
    os.environ["PIPELINES_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="pipelines-tests-")
_RUN_DIR = Path(os.environ["PIPELINES_TEST_RUN_DIR"])
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
    from tests.helpers import TINY_SIAMESE_OPTIONS

    options = dict(TINY_SIAMESE_OPTIONS, data=str(digits_folder), output=run_dir / "siamese_run")
    result = train_and_export(task, options)
    return task, result


@pytest.fixture(scope="session")
def tabular_run(run_dir):
    """A tabular model of the embedded penguins, trained for seconds, exported, checked, registered."""
    from pipelines.registry import get_task
    from pipelines.run import train_and_export
    from tests.helpers import TINY_TABULAR_OPTIONS

    task = get_task("tabular")
    return task, train_and_export(task, dict(TINY_TABULAR_OPTIONS, output=run_dir / "tabular_run"))


@pytest.fixture(scope="session")
def unet_run(run_dir):
    """A U-Net trained for seconds on 40 embedded digit scenes, exported, checked and registered."""
    from pipelines.data import digit_scenes_folder
    from pipelines.registry import get_task
    from pipelines.run import train_and_export
    from tests.helpers import TINY_UNET_OPTIONS

    scenes = digit_scenes_folder(count=40, seed=1)
    task = get_task("unet")
    return task, train_and_export(task, dict(TINY_UNET_OPTIONS, data=str(scenes), output=run_dir / "unet_run"))


@pytest.fixture(scope="session")
def text_run(run_dir):
    """A small AWD-LSTM classifier trained for seconds on generated reviews, exported, checked, registered."""
    from pipelines.registry import get_task
    from pipelines.run import train_and_export
    from tests.helpers import TINY_TEXT_OPTIONS, synthetic_reviews

    path = run_dir / "reviews.csv"
    synthetic_reviews(240).to_csv(path, index=False)
    task = get_task("text")
    return task, train_and_export(task, dict(TINY_TEXT_OPTIONS, data=str(path), output=run_dir / "text_run"))


@pytest.fixture(scope="session")
def classifier_run(run_dir, digits_folder):
    """A vision_learner image classifier trained for seconds on 300 embedded digits, exported, checked, registered."""
    from pipelines.registry import get_task
    from pipelines.run import train_and_export
    from tests.helpers import TINY_CLASSIFIER_OPTIONS

    task = get_task("classifier")
    options = dict(TINY_CLASSIFIER_OPTIONS, data=str(digits_folder), output=run_dir / "classifier_run")
    return task, train_and_export(task, options)
