"""`--distributed`: fastai's data-parallel training across two real processes on this CPU (torchrun starts
them, gloo connects them); the first process alone exports, checks parity and writes the artifact."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.test_cli import PIPELINES

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def test_two_processes_train_tabular_and_the_first_exports(tmp_path):
    pytest.importorskip("accelerate")
    completed = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", PIPELINES, "train-and-export", "tabular",
         "--distributed", "--epochs", "2", "--no-register", "--output", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "process 1: training done; process 0 exports" in output
    assert "in a single process" not in output
    assert output.count("[2/4 export]") == 1
    parity = json.loads((tmp_path / "run" / "parity.json").read_text())
    assert parity["passed"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["provenance"]["distributed"] is True
