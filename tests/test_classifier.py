"""The classifier task: fastai's vision_learner with the chapter's head and splitter choices, exported with
parity, served, and a user's own exported vision_learner brought in."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from export.parity import ParityCase

from tests.helpers import TINY_CLASSIFIER_OPTIONS, bentoml_server
from tests.test_cli import assert_clean_failure, run_cli
from tests.test_user_learners import export_verify_register, user_learner

pytestmark = pytest.mark.slow


def built(digits_folder, **changes):
    """A classifier learner (not trained) with TINY_CLASSIFIER_OPTIONS changed by `changes`."""
    from pipelines.registry import get_task

    task = get_task("classifier")
    options = task.resolve(task.Options.from_mapping({**TINY_CLASSIFIER_OPTIONS, "data": str(digits_folder), **changes}))
    return task, task.build_learner(task.prepare_data(options), options)


def head_layers(learn):
    from torch import nn

    return [m for m in learn.model[1].modules() if not isinstance(m, nn.Sequential)]


def test_head_and_splitter_options_change_the_model(digits_folder):
    from fastai.layers import AdaptiveConcatPool2d
    from torch import nn

    _, default = built(digits_folder)
    layers = head_layers(default.learn)
    assert isinstance(layers[0], AdaptiveConcatPool2d)
    assert [m.in_features for m in layers if isinstance(m, nn.Linear)] == [1024, 512]  # fastai's head
    assert len(default.learn.splitter(default.learn.model)) == 3  # fastai's ResNet split: stem+stages 1-2, stages 3-4, head

    _, changed = built(digits_folder, head_pool="avg", head_layers="256,64", head_dropout=0.2, head_bn=False,
                       splitter="per-block")
    layers = head_layers(changed.learn)
    assert isinstance(layers[0], nn.AdaptiveAvgPool2d)
    assert [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)] == [(512, 256), (256, 64), (64, 10)]
    assert not [m for m in layers if isinstance(m, nn.BatchNorm1d)]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.1, 0.1, 0.2]
    groups = changed.learn.splitter(changed.learn.model)
    assert len(groups) == 6  # stem, four ResNet stages, head
    assert sum(p.numel() for group in groups for p in group) == sum(p.numel() for p in changed.learn.model.parameters())


def test_changed_head_and_splitter_still_export_with_parity(digits_folder, tmp_path):
    folder = tmp_path / "changed"
    completed = run_cli("train-and-export", "classifier", "--data", str(digits_folder), "--arch", "resnet18",
                        "--image-size", "32", "--epochs", "1", "--lr", "3e-3", "--pretrained", "no", "--head-pool", "avg",
                        "--head-layers", "128,64", "--no-head-bn", "--splitter", "per-block", "--output", str(folder),
                        "--no-register")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "fit_one_cycle(1, slice(3e-05, 0.003)) on all layers (per-block splitter)" in completed.stdout
    assert json.loads((folder / "parity.json").read_text())["passed"]
    options = json.loads((folder / "source.json").read_text())["options"]
    assert (options["head_pool"], options["head_layers"], options["head_bn"], options["splitter"]) == \
        ("avg", "128,64", False, "per-block")


def test_parity_covers_batches_a_second_size_and_preprocessing(classifier_run):
    task, result = classifier_run
    report = json.loads((result.output_dir / "parity.json").read_text())
    names = [case["name"] for case in report["cases"]]
    assert names[:2] == ["valid batch 1", "valid batch 7"] and names[2].startswith("valid all")
    assert names[3] == "valid images at 72x88"
    assert report["cases"][3]["input_shapes"]["image"][2:] == [72, 88]
    assert all(case["argmax_agreement"] == 1.0 for case in report["cases"])
    assert report["preprocessing"]["compared"] >= 8 and report["preprocessing"]["passed"]
    assert result.manifest.labels == [str(v) for v in result.learn.dls.vocab]
    assert result.manifest.inputs[0].shape == ["batch", 3, "height", "width"]


def test_bad_options_are_clear_errors(tmp_path):
    assert_clean_failure(run_cli("train-and-export", "classifier", "--head-layers", "512,x", "--output", str(tmp_path / "o")),
                         "--head-layers '512,x'")
    completed = run_cli("train", "classifier", "--head-pool", "max", "--output", str(tmp_path / "o"))
    assert completed.returncode == 2 and "Invalid value" in completed.stderr


def test_service_answers_top_k_as_fastai_and_rejects_bad_requests(classifier_run):
    task, result = classifier_run
    images = [Path(item[0]) for item in result.learn.dls.valid_ds.items[:2]]
    expected, _ = result.learn.get_preds(dl=result.learn.dls.test_dl(images, bs=2))
    labels = result.manifest.labels
    with bentoml_server("services.classifier:ClassifierService") as url:
        with open(images[0], "rb") as image:
            answer = requests.post(f"{url}/predict", files={"image": image}, data={"k": "3"}, timeout=30).json()
        top, reference = answer["predictions"][0]["top"], np.sort(expected[0].numpy())[::-1]
        served = [entry["probability"] for entry in top]
        assert len(top) == 3 and served == sorted(served, reverse=True)
        assert max(abs(e["probability"] - float(expected[0][labels.index(e["label"])])) for e in top) <= 1e-4
        assert min(served) >= reference[3] - 1e-4  # really the three most probable (ties may order either way)
        files = [("images", open(path, "rb")) for path in images]
        batch = requests.post(f"{url}/predict_batch", files=files, timeout=30).json()
        for prediction, row in zip(batch["predictions"], expected.numpy()):
            assert abs(prediction["top"][0]["probability"] - float(row.max())) <= 1e-4
        assert len(batch["predictions"][0]["top"]) == 5
        everything = requests.post(f"{url}/predict", files={"image": open(images[0], "rb")}, data={"k": "99"}, timeout=30)
        assert len(everything.json()["predictions"][0]["top"]) == len(labels)
        for files, data, message in (
            ({"image": ("a.png", b"\x89PNG\r\n\x1a\nbroken")}, {}, "image: not a recognised image format"),
            ({"image": ("a.png", b"")}, {}, "image: the upload is empty"),
            ({"image": open(images[0], "rb")}, {"k": "0"}, "greater than or equal to 1"),
        ):
            response = requests.post(f"{url}/predict", files=files, data=data, timeout=30)
            assert response.status_code == 400 and message in response.text, response.text
        assert requests.post(f"{url}/predict", files={"image": open(images[1], "rb")}, timeout=30).status_code == 200


def assert_answers_like_learn_predict(url: str, expected: dict) -> None:
    """The served probabilities of each image within 1e-4 of the user's own `learn.predict` (expected.json)."""
    for path, probabilities in expected["probabilities"].items():
        with open(path, "rb") as image:
            answer = requests.post(f"{url}/predict", files={"image": image}, data={"k": "10"}, timeout=30).json()
        served = {entry["label"]: entry["probability"] for entry in answer["predictions"][0]["top"]}
        assert max(abs(served[label] - p) for label, p in zip(expected["labels"], probabilities)) <= 1e-4


def test_users_vision_learner_becomes_a_served_model(tmp_path, digits_folder):
    user_learner("classifier_user.py", digits_folder, tmp_path / "user")
    export_verify_register(tmp_path / "user" / "export.pkl", tmp_path / "user" / "sample", tmp_path / "artifact",
                           "classifier-user")
    parity = json.loads((tmp_path / "artifact" / "parity.json").read_text())
    assert "accuracy" in parity["cases"][-2]["metrics"]  # class folders named like the learner's classes
    expected = json.loads((tmp_path / "user" / "expected.json").read_text())
    with bentoml_server("services.classifier:ClassifierService", env={"CLASSIFIER_MODEL_TAG": "classifier-user:latest"}) as url:
        assert_answers_like_learn_predict(url, expected)


def test_learners_with_the_users_own_model_are_served(tmp_path, digits_folder):
    """`Learner(dls, xresnet18(n_out=...))` and the book's `simple_cnn` are classifiers by their data
    (images in, classes out), not by vision_learner's layers. The simple CNN answers at its training size
    only: its graph fixes height and width, and parity and bench leave out the second size."""
    from pipelines.artifact import load_user_learner, recognise_task
    from pipelines.errors import PipelineError
    from pipelines.registry import get_task

    user_learner("classifier_own_models.py", digits_folder, tmp_path / "user")
    any_size, fixed = tmp_path / "user" / "xresnet", tmp_path / "user" / "simple_cnn"
    exported = run_cli("export", "--learner", str(any_size / "export.pkl"), "--sample", str(any_size / "sample"),
                       "--output", str(any_size / "artifact"))
    assert exported.returncode == 0 and "recognised a classifier learner (XResNet)" in exported.stdout
    assert run_cli("verify", str(any_size / "artifact")).returncode == 0
    export_verify_register(fixed / "export.pkl", fixed / "sample", fixed / "artifact", "classifier-cnn")
    shapes = {folder.name: json.loads((folder / "artifact" / "manifest.json").read_text())["inputs"][0]["shape"]
              for folder in (any_size, fixed)}
    assert shapes == {"xresnet": ["batch", 3, "height", "width"], "simple_cnn": ["batch", 3, 28, 28]}
    second_size = [case["name"] for folder in (any_size, fixed)
                   for case in json.loads((folder / "artifact" / "parity.json").read_text())["cases"] if "72x88" in case["name"]]
    assert second_size == ["sample images at 72x88"]  # the xresnet's only
    task, learn = get_task("classifier"), load_user_learner(fixed / "export.pkl")
    case = ParityCase("sample", {"image": np.zeros((16, 3, 28, 28), np.float32)}, None, "")
    assert list(task.bench_inputs(learn, case)) == ["batch 1", "batch 16"]

    expected = json.loads((fixed / "expected.json").read_text())
    with bentoml_server("services.classifier:ClassifierService", env={"CLASSIFIER_MODEL_TAG": "classifier-cnn:latest"}) as url:
        assert_answers_like_learn_predict(url, expected)
        big = tmp_path / "big.png"
        Image.new("RGB", (300, 200), "white").save(big)
        with open(big, "rb") as image:  # resized to 28x28 by the service, as fastai's Resize does
            assert requests.post(f"{url}/predict", files={"image": image}, timeout=30).status_code == 200

    with pytest.raises(PipelineError, match=re.escape("gives (1, 1000) for one image at 28x28")):
        recognise_task(load_user_learner(tmp_path / "user" / "wrong_outputs.pkl"))


def test_a_timm_learner_exports_with_parity_and_without_timm_is_one_line(tmp_path, digits_folder, monkeypatch):
    import sys

    from pipelines.artifact import load_user_learner
    from pipelines.errors import PipelineError

    user_learner("classifier_timm.py", digits_folder, tmp_path / "user")
    learner, folder = tmp_path / "user" / "export.pkl", tmp_path / "artifact"
    exported = run_cli("export", "--learner", str(learner), "--sample", str(tmp_path / "user" / "sample"),
                       "--output", str(folder))
    assert exported.returncode == 0 and "recognised a classifier learner" in exported.stdout, exported.stderr[-3000:]
    verified = run_cli("verify", str(folder))
    assert verified.returncode == 0 and "parity passed" in verified.stdout, verified.stderr[-3000:]

    for name in [name for name in sys.modules if name.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)  # as where timm is not installed
    with pytest.raises(PipelineError, match=re.escape("timm is not installed here: pip install")):
        load_user_learner(learner)


def test_an_unconvertible_custom_body_is_named(tmp_path, digits_folder):
    (tmp_path / "my_bodies.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class SpectralBody(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv2d(3, 8, 3)\n"
        "    def forward(self, x):\n"
        "        x = self.conv(x)\n"
        "        return x + 0 * torch.linalg.svdvals(x).sum(dim=-1)[..., None, None]\n"
    )
    script = tmp_path / "make.py"
    script.write_text(
        "import sys\nfrom fastai.vision.all import *\nimport my_bodies\n"
        "path = Path(sys.argv[1])\n"
        "dls = ImageDataLoaders.from_name_re(path, get_image_files(path)[:60], r'^(.*)_\\d+.jpg$', item_tfms=Resize(32), "
        "batch_tfms=Normalize.from_stats(*imagenet_stats))\n"
        "model = nn.Sequential(my_bodies.SpectralBody(), create_head(8, dls.c, concat_pool=False))\n"
        "learn = Learner(dls, model)\nlearn.export(sys.argv[2])\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    import subprocess
    import sys

    subprocess.run([sys.executable, str(script), str(digits_folder), str(tmp_path / "body.pkl")], check=True, env=env,
                   capture_output=True)
    completed = run_cli("export", "--learner", str(tmp_path / "body.pkl"), "--sample", str(digits_folder),
                        "--output", str(tmp_path / "out"), env={"PYTHONPATH": str(tmp_path)})
    assert_clean_failure(completed, "no exporter could convert the model", "my_bodies.SpectralBody")


def test_a_learner_that_resizes_on_the_batch_is_exported_verified_and_served(tmp_path, digits_folder):
    """The book's pets recipe (presizing): Resize on the item, then aug_transforms(size=..., min_scale=0.75)
    on the batch; at validation fastai's GPU transforms resample to the model's size, and so does serving."""
    import subprocess
    import sys

    script = tmp_path / "make.py"
    script.write_text(
        "import json, sys\nfrom fastai.vision.all import *\npath = Path(sys.argv[1])\n"
        "dls = ImageDataLoaders.from_name_re(path, get_image_files(path)[:60], r'^(.*)_\\d+.jpg$', item_tfms=Resize(40), "
        "batch_tfms=aug_transforms(size=32, min_scale=0.75))\n"
        "learn = vision_learner(dls, resnet18, pretrained=False)\nlearn.export(sys.argv[2])\n"
        "files = get_image_files(path)[:4]\n"
        "print(json.dumps({str(f): learn.predict(f)[2].tolist() for f in files}))\n"
    )
    made = subprocess.run([sys.executable, str(script), str(digits_folder), str(tmp_path / "batch.pkl")],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    expected = json.loads(made.stdout.strip().splitlines()[-1])
    folder = tmp_path / "out"
    exported = run_cli("export", "--learner", str(tmp_path / "batch.pkl"), "--sample", str(digits_folder),
                       "--output", str(folder))
    assert exported.returncode == 0, exported.stderr[-3000:]
    verified = run_cli("verify", str(folder))
    assert verified.returncode == 0 and "parity passed" in verified.stdout, verified.stderr[-3000:]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["preprocessing"]["batch_resize"]["resizes"] and manifest["inputs"][0]["shape"][0] == "batch"
    registered = run_cli("register", str(folder), "--name", "classifier-presized")
    assert registered.returncode == 0, registered.stderr[-3000:]
    with bentoml_server("services.classifier:ClassifierService",
                        env={"CLASSIFIER_MODEL_TAG": "classifier-presized:latest"}) as url:
        for path, probabilities in expected.items():
            with open(path, "rb") as image:
                answer = requests.post(f"{url}/predict", files={"image": image}, data={"k": "10"}, timeout=30).json()
            served = {entry["label"]: entry["probability"] for entry in answer["predictions"][0]["top"]}
            assert max(abs(served[label] - p) for label, p in zip(sorted(served), probabilities)) < 1e-4
