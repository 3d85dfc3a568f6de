"""The benchmark scripts end with one line, not a traceback, when what they were asked to measure is missing."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.test_cli import assert_clean_failure


def run_script(module: str, *args: str, bentoml_home) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "BENTOML_HOME": str(bentoml_home)})


@pytest.mark.parametrize("module, args, message", [
    ("benchmarks.int8_exactness", ["/no/such/artifact"], "neither an artifact folder nor a model"),
    ("benchmarks.profile_operators", ["/no/such/artifact"], "neither an artifact folder nor a model"),
    ("benchmarks.png_encoding", ["/no/such/artifact"], "neither an artifact folder nor a model"),
    ("benchmarks.bench_unet", ["--artifact", "/no/such/artifact"], "no such folder"),
    ("benchmarks.bench_siamese", [], "no siamese model in the BentoML store"),
    ("benchmarks.bench_overhead", ["--requests", "5"], "lacks siamese:latest, unet:latest"),
])
def test_missing_models_end_benchmarks_with_one_line(tmp_path, module, args, message):
    assert_clean_failure(run_script(module, *args, bentoml_home=tmp_path), message)
