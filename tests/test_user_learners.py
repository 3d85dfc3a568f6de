"""Bring your own learner: a fastai user's `learn.export()` file becomes a verified, registered, served model
with three commands (`pipelines export --learner`, `verify`, `register`), for each of the four tasks.

Each learner is built in a separate Python process the way a fastai user builds it (tests/user_learners/),
and the served answers are compared with that process's own `learn.predict` on the same raw inputs.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import REPO, bentoml_server
from tests.test_cli import assert_clean_failure, run_cli

pytestmark = pytest.mark.slow
SCRIPTS = REPO / "tests" / "user_learners"


def user_learner(script: str, *args) -> None:
    completed = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


def export_verify_register(learner: Path, sample: Path, folder: Path, name: str) -> None:
    """The three commands README shows, each checked for a clean exit and its next-step hint."""
    exported = run_cli("export", "--learner", str(learner), "--sample", str(sample), "--output", str(folder))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "only files you trust" in exported.stdout and f"next: pipelines verify {folder}" in exported.stdout
    verified = run_cli("verify", str(folder))
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert "parity passed" in verified.stdout
    registered = run_cli("register", str(folder), "--name", name)
    assert registered.returncode == 0, registered.stderr[-3000:]
    assert f"registered {name}:" in registered.stdout
    assert not (folder / "learner.pkl").read_bytes() == b""
    for store_file in ("learner.pkl", "fastai_weights.pth"):
        assert store_file not in registered.stdout


@pytest.fixture(scope="module")
def scenes():
    from pipelines.data import digit_scenes_folder

    return digit_scenes_folder(count=40, seed=1)


def test_book_siamese_notebook_learner_is_served(tmp_path, digits_folder):
    """The book's classes live in the notebook's `__main__`; load_learner must still find them."""
    user_learner("siamese_notebook.py", digits_folder, tmp_path / "user")
    folder = tmp_path / "artifact"
    export_verify_register(tmp_path / "user" / "export.pkl", tmp_path / "user" / "pairs.csv", folder, "siamese-user")
    assert json.loads((folder / "manifest.json").read_text())["task"] == "siamese"
    expected = json.loads((tmp_path / "user" / "expected.json").read_text())
    with bentoml_server("services.siamese:SiameseService", env={"SIAMESE_MODEL_TAG": "siamese-user:latest"}) as url:
        for (a, b), probabilities in zip(expected["files"], expected["probabilities"]):
            with open(a, "rb") as first, open(b, "rb") as second:
                answer = requests.post(f"{url}/predict", files={"image_a": first, "image_b": second}, timeout=30).json()
            assert answer["model"].startswith("siamese-user:")
            assert abs(answer["probability_same"] - probabilities[1]) < 1e-4


def test_siamese_learner_with_its_own_forward_is_exported_as_it_is(tmp_path, digits_folder):
    """The one-pass graph computes the book's forward (the head on both encodings concatenated); a model
    that compares the encodings otherwise is exported with its own forward, two encoder passes, with parity."""
    import torch

    from pipelines.artifact import load_user_learner, recognise_task
    from pipelines.errors import PipelineError

    user_learner("siamese_own_forward.py", digits_folder, tmp_path / "user")
    folder = tmp_path / "artifact"
    exported = run_cli("export", "--learner", str(tmp_path / "user" / "export.pkl"), "--sample",
                       str(tmp_path / "user" / "pairs.csv"), "--output", str(folder))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "forward is not the book's" in exported.stdout and "two encoder passes" in exported.stdout
    verified = run_cli("verify", str(folder))
    assert verified.returncode == 0 and "parity passed" in verified.stdout, verified.stderr[-3000:]

    learn = load_user_learner(tmp_path / "user" / "export.pkl")
    learn.model.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(7, 2))  # fits no encoding
    with pytest.raises(PipelineError, match="this learner's SiameseModel fails on a pair of images"):
        recognise_task(learn)


def test_unet_learner_is_served(tmp_path, scenes):
    user_learner("unet_user.py", scenes, tmp_path / "user")
    export_verify_register(tmp_path / "user" / "export.pkl", tmp_path / "user" / "sample", tmp_path / "artifact", "unet-user")
    expected = json.loads((tmp_path / "user" / "expected.json").read_text())
    with bentoml_server("services.unet:UnetService", env={"UNET_MODEL_TAG": "unet-user:latest"}) as url:
        for name, mask in expected.items():
            with open(tmp_path / "user" / "sample" / name, "rb") as image:
                response = requests.post(f"{url}/segment", files={"image": image}, timeout=60)
            assert response.status_code == 200
            served = np.asarray(Image.open(__import__("io").BytesIO(response.content)))
            np.testing.assert_array_equal(served, np.array(mask))


def test_text_learner_is_served(tmp_path, run_dir):
    from tests.helpers import synthetic_reviews

    frame = synthetic_reviews(160)
    frame["label"] = (frame["label"] == "good").astype(int)  # classes as numbers: fastai's vocab holds ints then
    reviews, labelled = tmp_path / "reviews.csv", tmp_path / "labelled.csv"
    frame.to_csv(reviews, index=False)
    frame.tail(24).to_csv(labelled, index=False)
    user_learner("text_user.py", reviews, tmp_path / "user")
    export_verify_register(tmp_path / "user" / "export.pkl", labelled, tmp_path / "artifact", "text-user")
    cases = json.loads((tmp_path / "artifact" / "parity.json").read_text())["cases"]
    assert "accuracy" in next(case for case in cases if case["name"].startswith("sample"))["metrics"]
    expected = json.loads((tmp_path / "user" / "expected.json").read_text())
    assert expected["labels"] == ["0", "1"]
    with bentoml_server("services.text:TextService", env={"TEXT_MODEL_TAG": "text-user:latest"}) as url:
        for text, probabilities in expected["probabilities"].items():
            answer = requests.post(f"{url}/classify", json={"text": text}, timeout=30).json()
            served = answer["predictions"][0]["probabilities"]
            for label, probability in zip(expected["labels"], probabilities):
                assert abs(served[label] - probability) < 1e-4, text


def test_tabular_learner_is_served(tmp_path):
    import pandas as pd

    user_learner("tabular_user.py", tmp_path / "user")
    export_verify_register(tmp_path / "user" / "export.pkl", tmp_path / "user" / "records.csv", tmp_path / "artifact", "tabular-user")
    expected = json.loads((tmp_path / "user" / "expected.json").read_text())
    frame = pd.read_csv(tmp_path / "user" / "records.csv")
    records = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    with bentoml_server("services.tabular:TabularService", env={"TABULAR_MODEL_TAG": "tabular-user:latest"}) as url:
        answer = requests.post(f"{url}/predict", json={"records": records}, timeout=30).json()
    for prediction, probabilities in zip(answer["predictions"], expected["probabilities"]):
        for label, probability in zip(expected["labels"], probabilities):
            assert abs(prediction["probabilities"][label] - probability) < 1e-4


def test_tabular_learner_without_fillmissing_or_normalize(tmp_path):
    """procs=[Categorify] only: nothing to fill, columns go in unscaled; a sample row fastai would compute
    NaN for (no value, no FillMissing) is left out of parity with a line, as the service refuses it."""
    user_learner("tabular_bare_procs.py", tmp_path / "user")
    folder = tmp_path / "artifact"
    exported = run_cli("export", "--learner", str(tmp_path / "user" / "export.pkl"), "--sample",
                       str(tmp_path / "user" / "records.csv"), "--output", str(folder))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "left out 1 sample row(s) with no value in bill_length_mm" in exported.stdout
    verified = run_cli("verify", str(folder))
    assert verified.returncode == 0 and "parity passed" in verified.stdout, verified.stderr[-3000:]
    preprocessing = json.loads((folder / "manifest.json").read_text())["preprocessing"]
    assert preprocessing["fill_values"] == {}
    assert set(preprocessing["means"].values()) == {0.0} and set(preprocessing["stds"].values()) == {1.0}


def test_learners_whose_targets_no_task_serves_are_refused(tmp_path, digits_folder):
    """A multi-label or regression vision_learner has the classifier's layers; serving it with a softmax
    would answer wrongly, so export refuses it in one line (so for a U-Net predicting images, tabular
    multi-label and multi-target)."""
    from pipelines.artifact import load_user_learner, recognise_task
    from pipelines.errors import PipelineError

    user_learner("unserved_targets.py", digits_folder, tmp_path)
    assert_clean_failure(run_cli("export", "--learner", str(tmp_path / "vision_multi_label.pkl"), "--sample",
                                 str(digits_folder), "--output", str(tmp_path / "out")),
                         "this classifier learner predicts several labels per input", "BCEWithLogitsLossFlat")
    assert not (tmp_path / "out").exists()
    for learner, message in (("vision_regression", "this classifier learner predicts numbers (RegressionBlock)"),
                             ("unet_image_to_image", "this U-Net learner predicts an image (an ImageBlock target"),
                             ("tabular_multi_label", "this tabular learner predicts several labels per input"),
                             ("tabular_two_targets", "predicts 2 targets at once (bill_length_mm, body_mass_g)")):
        with pytest.raises(PipelineError, match=re.escape(message)):
            recognise_task(load_user_learner(tmp_path / f"{learner}.pkl"))
    no_codes = load_user_learner(tmp_path / "unet_no_codes.pkl")
    assert recognise_task(no_codes).labels(no_codes) == ["0", "1", "2"]  # MaskBlock() without codes: by number


# ----- the errors a user meets ----------------------------------------------------------------------
def test_a_file_that_is_not_a_learner(tmp_path):
    notes = tmp_path / "notes.pkl"
    notes.write_text("not a pickle at all")
    assert_clean_failure(run_cli("export", "--learner", str(notes), "--sample", str(tmp_path)), "not a fastai learner file")
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pkl")
    assert_clean_failure(run_cli("export", "--learner", str(tmp_path / "dict.pkl"), "--sample", str(tmp_path)),
                         "not a fastai Learner (it holds a builtins.dict)")


def test_a_learner_of_no_known_task_names_its_model(tmp_path):
    script = tmp_path / "make.py"
    script.write_text(
        "import sys, torch\nfrom fastai.tabular.all import *\nimport pandas as pd\n"
        "df = pd.DataFrame({'a': range(40), 'b': [0.5] * 40, 'y': [0, 1] * 20})\n"
        "dls = TabularDataLoaders.from_df(df, y_names='y', cont_names=['a', 'b'], procs=[Normalize], y_block=CategoryBlock())\n"
        "learn = Learner(dls, nn.Sequential(nn.Linear(2, 2)))\n"
        "learn.model = nn.Sequential(nn.Linear(2, 2))\nlearn.export(sys.argv[1])\n"
    )
    completed = subprocess.run([sys.executable, str(script), str(tmp_path / "seq.pkl")], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert_clean_failure(run_cli("export", "--learner", str(tmp_path / "seq.pkl"), "--sample", str(tmp_path)),
                         "torch.nn.modules.container.Sequential, which no task recognises")


def test_pickle_that_needs_code_this_environment_lacks(tmp_path):
    """As a learner saved under another fastai release refers to modules this one lacks."""
    (tmp_path / "legacy_layers.py").write_text("class OldLayer:\n    pass\n")
    subprocess.run([sys.executable, "-c", "import torch, legacy_layers; torch.save(legacy_layers.OldLayer(), 'old.pkl')"],
                   cwd=tmp_path, check=True, env={"PYTHONPATH": str(tmp_path)})
    assert_clean_failure(run_cli("export", "--learner", str(tmp_path / "old.pkl"), "--sample", str(tmp_path)),
                         "refers to code this environment lacks", "legacy_layers")


def test_sample_that_does_not_fit_the_learner(tmp_path):
    user_learner("tabular_user.py", tmp_path / "user")
    import pandas as pd

    frame = pd.read_csv(tmp_path / "user" / "records.csv").drop(columns=["island"])
    frame.to_csv(tmp_path / "wrong.csv", index=False)
    learner = str(tmp_path / "user" / "export.pkl")
    completed = run_cli("export", "--learner", learner, "--sample", str(tmp_path / "wrong.csv"), "--output", str(tmp_path / "out"))
    assert_clean_failure(completed, "lacks the learner's column(s) island")
    assert not (tmp_path / "out").exists()  # the import failed: the folder it made is gone, --output free again
    assert_clean_failure(run_cli("export", "--learner", learner, "--task", "unet", "--sample", str(tmp_path)),
                         "not a unet model")


def test_custom_layer_the_exporter_cannot_convert_is_named(tmp_path):
    (tmp_path / "my_layers.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class SpectralGate(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x + 0 * torch.linalg.svdvals(x[:, None, :]).sum(dim=-1, keepdim=True)\n"
    )
    script = tmp_path / "make.py"
    script.write_text(
        "import sys\nimport palmerpenguins\nfrom fastai.tabular.all import *\nimport my_layers\n"
        "df = palmerpenguins.load_penguins()\n"
        # a fixed split: a random one put both rows with a missing bill length in validation once (fastai refuses)
        "dls = TabularDataLoaders.from_df(df, y_names='species', cat_names=['island'], cont_names=['bill_length_mm'], "
        "procs=[Categorify, FillMissing, Normalize], valid_idx=list(range(0, len(df), 5)))\n"
        "learn = tabular_learner(dls, layers=[8])\nlearn.model.layers.append(my_layers.SpectralGate())\n"
        "learn.export(sys.argv[1])\ndf.head(5).to_csv(sys.argv[2], index=False)\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    made = subprocess.run([sys.executable, str(script), str(tmp_path / "gate.pkl"), str(tmp_path / "rows.csv")],
                          env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    completed = run_cli("export", "--learner", str(tmp_path / "gate.pkl"), "--sample", str(tmp_path / "rows.csv"),
                        "--output", str(tmp_path / "out"), env={"PYTHONPATH": str(tmp_path)})
    assert_clean_failure(completed, "no exporter could convert the model", "my_layers.SpectralGate")
