"""CLI errors: one clear line on stderr, a non-zero exit, no traceback, nothing overwritten."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PIPELINES = str(Path(sys.executable).parent / "pipelines")


def run_cli(*args, env=None, timeout=240):
    return subprocess.run(
        [PIPELINES, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def assert_clean_failure(completed, *fragments):
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr + completed.stdout
    for fragment in fragments:
        assert fragment in completed.stderr, completed.stderr


def test_help_lists_tasks_and_options():
    completed = run_cli("train-and-export", "siamese", "--help")
    assert completed.returncode == 0
    for option in ("--data", "--epochs", "--lr", "--image-size", "--batch-size", "--arch", "--pretrained", "--seed", "--output"):
        assert option in completed.stdout
    assert "siamese" in run_cli("tasks").stdout


def test_unknown_task():
    assert_clean_failure(run_cli("train-and-export", "resnet"), "unknown task 'resnet'", "siamese")


def test_missing_data_folder(tmp_path):
    assert_clean_failure(
        run_cli("train-and-export", "siamese", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "out")),
        "no such folder",
    )


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert_clean_failure(
        run_cli("train-and-export", "siamese", "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "out")),
        "no image files found",
    )


def test_file_names_that_do_not_match_the_label_pattern(tmp_path, digits_folder):
    folder = tmp_path / "renamed"
    folder.mkdir()
    for n, source in enumerate(sorted(digits_folder.glob("*.jpg"))[:20]):
        (folder / f"img{n}.jpg").write_bytes(source.read_bytes())
    assert_clean_failure(
        run_cli("train-and-export", "siamese", "--data", str(folder), "--output", str(tmp_path / "out")),
        "does not match the label pattern",
    )


def test_output_folder_that_is_not_empty_is_never_overwritten(tmp_path):
    output = tmp_path / "previous"
    output.mkdir()
    (output / "model.onnx").write_text("an earlier run's model")
    completed = run_cli("train-and-export", "siamese", "--output", str(output))
    assert_clean_failure(completed, "already exists")
    assert (output / "model.onnx").read_text() == "an earlier run's model"


def test_pets_without_network_names_the_offline_alternatives(tmp_path):
    # A proxy on a closed loopback port makes the download fail at once, with or without internet.
    closed = "http://127.0.0.1:9"
    completed = run_cli(
        "train-and-export", "siamese", "--data", "pets", "--output", str(tmp_path / "out"),
        env={"HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed,
             "FASTAI_HOME": str(tmp_path / "fastai_home")},
    )
    assert_clean_failure(completed, "could not download Oxford-IIIT Pets", "--data digits")


@pytest.mark.parametrize("bad", [["--arch", "vgg16"], ["--epochs", "0"], ["--pretrained", "maybe"], ["--name", "My Model"]])
def test_bad_option_values_are_usage_errors(bad, tmp_path):
    completed = run_cli("train-and-export", "siamese", *bad, "--output", str(tmp_path / "out"))
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr and "Invalid value" in completed.stderr


def test_a_validation_file_is_named_in_its_errors(tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("review,stars\ngood food,5\nawful,1\n")
    other = tmp_path / "other.csv"
    other.write_text("comment,stars\nfine,5\n")
    assert_clean_failure(
        run_cli("train-and-export", "text", "--data", str(texts), "--valid-data", str(other), "--output", str(tmp_path / "a")),
        f"--valid-data {other}: no column 'review'",
    )
    assert_clean_failure(
        run_cli("train-and-export", "tabular", "--valid-data", str(tmp_path / "absent.csv"), "--output", str(tmp_path / "b")),
        f"--valid-data {tmp_path / 'absent.csv'}: no such file",
    )


def test_training_that_diverges_says_so_and_saves_nothing(tmp_path):
    completed = run_cli("train-and-export", "tabular", "--epochs", "1", "--lr", "1e9", "--output", str(tmp_path / "out"))
    assert_clean_failure(completed, "training diverged", "--lr")
    assert not any((tmp_path / "out").iterdir())
