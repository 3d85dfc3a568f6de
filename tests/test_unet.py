"""U-Net: an export that holds at any input size, parity, preprocessing, and the mask service end to end."""

import io
import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import requests
import torch
from PIL import Image

from services.images import decode_image, image_to_tensor
from tests.helpers import bentoml_server, image_bytes

pytestmark = pytest.mark.slow


def test_parity_passes_at_sizes_that_are_not_multiples_of_32(unet_run):
    _, result = unet_run
    report = json.loads((result.output_dir / "parity.json").read_text())
    assert report["passed"], report
    shapes = {tuple(case["input_shapes"]["image"][2:]) for case in report["cases"]}
    assert {(100, 150), (97, 131), (64, 64), (360, 480)} <= shapes
    whole = next(case for case in report["cases"] if case["name"].startswith("valid all"))
    assert whole["argmax_agreement"] == 1.0
    assert set(whole["metrics"]) == {"accuracy", "dice"}
    assert whole["metrics"]["accuracy"]["pytorch"] == whole["metrics"]["accuracy"]["onnx"]
    assert (result.output_dir / "show_results.png").stat().st_size > 1000
    assert "show_results.png" in (result.output_dir / "report.md").read_text()


@pytest.mark.parametrize("size", [(64, 96), (100, 150), (33, 47)])
def test_exportable_wrapper_is_bit_identical_to_fastai(unet_run, size):
    task, result = unet_run
    model = result.learn.model.eval().cpu()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(task.exportable_module(result.learn)(x), model(x))


def test_fastai_model_traced_as_is_breaks_off_its_export_size(unet_run, tmp_path):
    """Why the wrapper exists: tracing fastai's DynamicUnet freezes its resize decisions."""
    _, result = unet_run
    model = result.learn.model.eval().cpu()
    path = tmp_path / "naive.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Concat.*dimensions must match"):
        session.run(None, {"image": np.zeros((1, 3, 100, 150), np.float32)})


def raw_images():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (70, 90, 3), np.uint8))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    return {
        "rgb.png": image_bytes(base, "PNG"),
        "rgba.png": image_bytes(rgba, "PNG"),
        "grey.png": image_bytes(base.convert("L"), "PNG"),
        "palette.png": image_bytes(base.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "portrait.jpg": image_bytes(base.resize((41, 99)), "JPEG", quality=90),
    }


def test_serving_tensors_equal_fastai_test_dl(unet_run, tmp_path):
    task, result = unet_run
    spec = result.manifest.preprocessing
    assert spec.resize_method == "none"
    for name, data in raw_images().items():
        path = tmp_path / name
        path.write_bytes(data)
        expected = result.learn.dls.test_dl([path], bs=1).one_batch()[0][0].cpu().float().numpy()
        served = image_to_tensor(decode_image(data, "image"), spec)
        assert served.shape == expected.shape, name
        np.testing.assert_allclose(served, expected, atol=1e-6, rtol=0, err_msg=name)


def test_folder_not_in_camvid_layout_is_a_clear_cli_error(tmp_path):
    import subprocess

    from tests.helpers import REPO
    from tests.test_cli import PIPELINES

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    completed = subprocess.run([PIPELINES, "train-and-export", "unet", "--data", str(tmp_path), "--output",
                                str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "not in CamVid's layout, lacks labels (or masks), codes.txt" in completed.stderr


@pytest.fixture(scope="module")
def server(unet_run):
    with bentoml_server("services.unet:UnetService", env={"PIPELINES_PROVIDER": "cpu"}) as url:
        yield url


def test_served_mask_has_the_upload_size_and_equals_the_pytorch_mask(unet_run, server, tmp_path):
    task, result = unet_run
    learn = result.learn
    scene = Image.open(sorted(learn.dls.valid_ds.items)[0]).convert("RGB").resize((150, 100), Image.BILINEAR)
    path = tmp_path / "scene_100x150.png"
    scene.save(path)
    probabilities, _ = learn.get_preds(dl=learn.dls.test_dl([path], bs=1))
    expected = probabilities[0].argmax(dim=0).numpy()
    with open(path, "rb") as handle:
        response = requests.post(f"{server}/segment", files={"image": handle}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert zlib_level_of_png(response.content) == "fastest"  # services.unet.FAST_PNG, not Pillow's default
    mask = np.asarray(Image.open(io.BytesIO(response.content)))
    assert mask.shape == (100, 150)
    np.testing.assert_array_equal(mask, expected)

    with open(path, "rb") as handle:
        summary = requests.post(f"{server}/summary", files={"image": handle}, timeout=60).json()
    assert (summary["width"], summary["height"]) == (150, 100)
    assert sum(c["pixels"] for c in summary["classes"]) == 150 * 100 and summary["not_seen_pixels"] == 0
    assert {c["name"] for c in summary["classes"]} <= set(result.manifest.labels)
    with open(path, "rb") as handle:
        overlay = requests.post(f"{server}/overlay", files={"image": handle}, timeout=60)
    assert Image.open(io.BytesIO(overlay.content)).size == (150, 100)
    assert zlib_level_of_png(overlay.content) == "fastest"


def zlib_level_of_png(png: bytes) -> str:
    """The compression level a PNG's encoder declared, from its first IDAT chunk's zlib header (FLEVEL bits)."""
    position = 8
    while position < len(png):
        length = int.from_bytes(png[position:position + 4], "big")
        if png[position + 4:position + 8] == b"IDAT":
            return ("fastest", "fast", "default", "maximum")[png[position + 9] >> 6]
        position += 12 + length
    raise AssertionError("no IDAT chunk in the PNG")


def test_bad_upload_is_400_and_server_keeps_serving(server, tmp_path):
    response = requests.post(f"{server}/segment", files={"image": ("x.png", b"\x89PNG\r\n\x1a\nbroken")}, timeout=30)
    assert response.status_code == 400 and "image: " in response.text
    good = image_bytes(Image.new("RGB", (31, 45), (20, 40, 60)), "PNG")
    after = requests.post(f"{server}/segment", files={"image": ("ok.png", good)}, timeout=30)
    assert after.status_code == 200
    assert Image.open(io.BytesIO(after.content)).size == (31, 45)


def test_more_classes_than_the_mask_png_holds_are_refused_in_one_line():
    """Class indices share the greyscale mask with NOT_SEEN (255): a U-Net of 300 classes would wrap around."""
    from types import SimpleNamespace

    from fastai.vision.all import AddMaskCodes

    from pipelines.errors import PipelineError
    from pipelines.registry import get_task

    def learner(classes):
        codes = AddMaskCodes(codes=[f"class {i}" for i in range(classes)])
        return SimpleNamespace(dls=SimpleNamespace(valid=SimpleNamespace(after_item=SimpleNamespace(fs=[codes]))))

    task = get_task("unet")
    assert task.labels(learner(255))[-1] == "class 254"
    with pytest.raises(PipelineError, match="this U-Net has 300 classes; .* at most 255 classes are served"):
        task.labels(learner(300))
