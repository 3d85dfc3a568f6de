"""The stage commands on one artifact folder: train, export, verify, register, each its own process.

They give the same model as `train-and-export`, and registration takes only what verify passed.
"""

import json

import bentoml
import numpy as np
import pytest

from services.manifest import MODEL_FILE, SCHEMA_VERSION, Manifest, ManifestVersionError
from services.runtime import create_session
from tests.helpers import TINY_TABULAR_OPTIONS
from tests.test_cli import assert_clean_failure, run_cli

pytestmark = pytest.mark.slow


def stored_versions(name: str) -> set:
    try:
        return {model.tag for model in bentoml.models.list(name)}
    except bentoml.exceptions.NotFound:
        return set()


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """`pipelines train tabular` with the options of the train-and-export fixture, then export and verify."""
    folder = tmp_path_factory.mktemp("stages") / "tabular"
    options = TINY_TABULAR_OPTIONS
    trained = run_cli("train", "tabular", "--epochs", str(options["epochs"]), "--lr", str(options["lr"]),
                      "--batch-size", str(options["batch_size"]), "--seed", str(options["seed"]), "--output", str(folder))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"next: pipelines export {folder}" in trained.stdout
    record = json.loads((folder / "source.json").read_text())
    assert record["kind"] == "trained" and record["options"]["epochs"] == options["epochs"]
    assert record["options"]["batch_size"] == options["batch_size"] and record["options"]["data"] == "penguins"
    assert (folder / "fastai_weights.pth").is_file() and (folder / "training.json").is_file()
    assert not (folder / MODEL_FILE).exists()
    for stage in ("export", "verify"):
        completed = run_cli(stage, str(folder))
        assert completed.returncode == 0, completed.stderr[-3000:]
    return folder


def test_stages_give_the_model_train_and_export_gives(staged, tabular_run):
    _, chained = tabular_run
    staged_manifest, chained_manifest = Manifest.read(staged), chained.manifest
    assert staged_manifest.preprocessing == chained_manifest.preprocessing
    assert staged_manifest.labels == chained_manifest.labels
    parity = json.loads((staged / "parity.json").read_text())
    assert parity["passed"] and parity["data_source"].startswith("penguins")
    rng = np.random.default_rng(0)
    spec = staged_manifest.preprocessing
    feeds = {"x_cat": np.stack([rng.integers(0, len(spec.categories[c]), 16) for c in spec.x_cat_columns], axis=1),
             "x_cont": rng.standard_normal((16, len(spec.cont_names)), dtype=np.float32)}
    ours = create_session(staged / MODEL_FILE).run(None, feeds)[0]
    theirs = create_session(chained.output_dir / MODEL_FILE).run(None, feeds)[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_register_takes_a_name_beside_the_task_model(staged, tabular_run):
    completed = run_cli("register", str(staged), "--name", "tabular-stages")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "TABULAR_MODEL_TAG=tabular-stages:" in completed.stdout
    assert bentoml.models.get("tabular-stages:latest").info.labels["task"] == "tabular"
    assert bentoml.models.get("tabular:latest").tag != bentoml.models.get("tabular-stages:latest").tag
    assert_clean_failure(run_cli("register", str(staged), "--name", "Not A Name"), "model name 'Not A Name'")


def test_register_refuses_an_unverified_or_changed_model(staged, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(staged, copy)
    (copy / MODEL_FILE).write_bytes((copy / MODEL_FILE).read_bytes() + b"\0")
    before = stored_versions("tabular-changed")
    assert_clean_failure(run_cli("register", str(copy), "--name", "tabular-changed"), "changed after it was verified")
    (copy / "parity.json").unlink()
    assert_clean_failure(run_cli("register", str(copy), "--name", "tabular-changed"), "was never verified")
    assert stored_versions("tabular-changed") == before == set()


def test_a_parity_failure_through_the_cli_exits_1_names_it_and_registers_nothing(staged, tmp_path):
    """A model.onnx whose weights are not the trained ones (the last layer's weights scaled): verify exits
    1 with the typed error and what differs; register refuses; the store is unchanged."""
    import shutil

    import onnx
    from onnx import numpy_helper

    copy = tmp_path / "tampered"
    shutil.copytree(staged, copy)
    model = onnx.load(str(copy / MODEL_FILE))
    last = [tensor for tensor in model.graph.initializer if len(tensor.dims) == 2][-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) * 3.0, last.name))
    onnx.save(model, str(copy / MODEL_FILE))
    completed = run_cli("verify", str(copy))
    assert completed.returncode == 1
    assert_clean_failure(completed, "ToleranceExceededError", "logits differ by up to")
    assert not json.loads((copy / "parity.json").read_text())["passed"]
    assert_clean_failure(run_cli("register", str(copy), "--name", "tabular-tampered"), "failed its parity check")
    assert stored_versions("tabular-tampered") == set()


def test_reexport_makes_the_model_unverified_again(staged, tmp_path):
    import shutil

    copy = tmp_path / "again"
    shutil.copytree(staged, copy)
    assert run_cli("export", str(copy)).returncode == 0
    assert not (copy / "parity.json").exists()
    assert_clean_failure(run_cli("register", str(copy)), "was never verified")


def test_an_export_that_fails_halfway_leaves_the_verified_files_as_they_were(staged, tmp_path, monkeypatch):
    """The new graph is written beside model.onnx and replaces it only once its manifest is made."""
    import shutil

    from pipelines import run
    from pipelines.artifact import load_model_source
    from pipelines.errors import PipelineError

    copy = tmp_path / "kept"
    shutil.copytree(staged, copy)
    before = {name: (copy / name).read_bytes() for name in (MODEL_FILE, "manifest.json", "parity.json")}

    def no_manifest(*args, **kwargs):
        raise PipelineError("the manifest could not be made")

    monkeypatch.setattr(run, "build_manifest", no_manifest)
    with pytest.raises(PipelineError, match="the manifest could not be made"):
        run.export(load_model_source(copy))
    assert {name: (copy / name).read_bytes() for name in before} == before
    assert sorted(path.name for path in copy.iterdir()) == sorted(path.name for path in staged.iterdir())


def test_stage_errors_are_one_line(tmp_path):
    assert_clean_failure(run_cli("export", str(tmp_path / "nothing")), "no such artifact folder")
    assert_clean_failure(run_cli("verify", str(tmp_path)), "not an artifact folder")
    completed = run_cli("export")
    assert completed.returncode == 2 and "give one of ARTIFACT, --learner FILE or --weights FILE" in completed.stderr
    assert_clean_failure(run_cli("export", "--learner", str(tmp_path / "export.pkl")), "--learner needs --sample")


def test_weights_from_learn_save_with_the_train_options(staged, tmp_path):
    """The pickle-free way in: a weights file and the options it was trained with."""
    options = tmp_path / "options.json"
    options.write_text(json.dumps(json.loads((staged / "source.json").read_text())["options"]))
    folder = tmp_path / "from-weights"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": "10,10"}))
    assert_clean_failure(run_cli("export", "--weights", str(staged / "fastai_weights.pth"), "--task", "tabular",
                                 "--options", str(bad), "--output", str(folder)), "do not fit the tabular model")
    assert not folder.exists()  # so the same --output works on the next try
    completed = run_cli("export", "--weights", str(staged / "fastai_weights.pth"), "--task", "tabular",
                        "--options", str(options), "--output", str(folder))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (folder / MODEL_FILE).is_file()


def test_help_lists_the_stages():
    completed = run_cli("--help")
    for command in ("train", "export", "verify", "register", "train-and-export"):
        assert f"  {command} " in completed.stdout


def test_manifest_of_another_schema_version_says_what_to_do(staged, tmp_path):
    data = json.loads((staged / "manifest.json").read_text())
    for version, advice in ((SCHEMA_VERSION + 1, "upgrade"), (0, "export the model again")):
        (tmp_path / "manifest.json").write_text(json.dumps({**data, "schema_version": version}))
        with pytest.raises(ManifestVersionError, match=advice):
            Manifest.read(tmp_path)


def test_a_service_given_a_model_of_another_task_says_which_and_stops(staged):
    import os
    import subprocess

    from tests.helpers import BENTOML, REPO

    assert run_cli("register", str(staged), "--name", "tabular-for-siamese").returncode == 0
    completed = subprocess.run(
        [BENTOML, "serve", "services.siamese:SiameseService", "--host", "127.0.0.1", "--port", "0"], cwd=REPO,
        env={**os.environ, "SIAMESE_MODEL_TAG": "tabular-for-siamese:latest"}, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0
    assert "is a 'tabular' model; the siamese service serves 'siamese' models" in completed.stderr + completed.stdout
