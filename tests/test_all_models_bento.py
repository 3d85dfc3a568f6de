"""The deployable Bento (bentofile.yaml, every registered model) and its GPU variant: `bentoml build`, the
container build context, the built Bento served for real and called through the typed client, and the
GPU Bento refusing to start without CUDA."""

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import bentoml
import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from services.client import PipelinesClient, PipelinesRequestError
from services.registry import SERVED_TASKS
from tests.helpers import BENTOML, REPO, bentoml_server, build_bento, check_container_context, free_port

pytestmark = pytest.mark.slow
TASKS = tuple(SERVED_TASKS)
PENGUIN = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230,
           "body_mass_g": 5800, "sex": "male", "year": 2009}


@pytest.fixture(scope="module")
def runs(siamese_run, unet_run, text_run, tabular_run, classifier_run):
    return {"siamese": siamese_run, "unet": unet_run, "text": text_run, "tabular": tabular_run,
            "classifier": classifier_run}


@pytest.fixture(scope="module")
def cpu_bento(runs):
    return build_bento("bentofile.yaml")


@pytest.fixture(scope="module")
def latest_tags(runs):
    return {task: str(bentoml.models.get(f"{task}:latest").tag) for task in TASKS}


@pytest.fixture(scope="module")
def served_bento(cpu_bento, tmp_path_factory):
    """The built Bento (its own copy of the sources and models), not the source folder."""
    with bentoml_server(str(cpu_bento.tag), env={"PIPELINES_PROVIDER": "cpu"}, cwd=tmp_path_factory.mktemp("serve"),
                        timeout=120) as url:
        yield url


def bento_service_config(bento) -> dict:
    with open(bento.path_of("bento.yaml")) as handle:
        info = yaml.safe_load(handle)
    return info, info["services"][0].get("config", {})


def test_cpu_bento_pins_the_four_models_and_ships_onnxruntime_without_torch(cpu_bento, latest_tags):
    assert sorted(str(model.tag) for model in cpu_bento.info.all_models) == sorted(latest_tags.values())
    assert "openvino" in check_container_context(cpu_bento, runtime="onnxruntime")  # PIPELINES_PROVIDER=openvino
    info, config = bento_service_config(cpu_bento)
    assert info["service"] == "services.pipelines:Pipelines"
    assert "gpu" not in config.get("resources", {})
    with open(cpu_bento.path_of("env/docker/Dockerfile")) as handle:
        assert "PIPELINES_PROVIDER=cpu" in handle.read().replace('"', "")


def test_a_slow_request_does_not_hold_up_the_other_endpoints(served_bento):
    """BentoML answers sync endpoints one at a time unless the service allows more threads
    (PIPELINES_REQUEST_THREADS): a tabular request sent while the U-Net segments a 2-megapixel image (at
    the image's size: a second or more) is answered first. With one thread it waits for the U-Net."""
    large = io.BytesIO()
    Image.new("RGB", (1600, 1200), (90, 120, 30)).save(large, format="PNG")
    finished = []

    def segment() -> None:
        response = requests.post(f"{served_bento}/unet/segment", files={"image": ("large.png", large.getvalue())},
                                 timeout=120)
        finished.append(("unet", response.status_code))

    slow = threading.Thread(target=segment)
    slow.start()
    time.sleep(0.2)  # the small upload is in the U-Net handler by now
    response = requests.post(f"{served_bento}/tabular/predict", json={"records": [PENGUIN]}, timeout=60)
    finished.append(("tabular", response.status_code))
    slow.join()
    assert finished == [("tabular", 200), ("unet", 200)]


def test_gpu_bento_installs_onnxruntime_gpu_requests_a_gpu_and_refuses_to_start_without_cuda(runs, latest_tags, tmp_path):
    bento = build_bento("bentofile.gpu.yaml")
    assert sorted(str(model.tag) for model in bento.info.all_models) == sorted(latest_tags.values())
    check_container_context(bento, runtime="onnxruntime-gpu")
    with open(bento.path_of("env/python/requirements.in")) as handle:
        assert "onnxruntime-gpu[cuda,cudnn]" in handle.read().replace(" ", "")
    with open(bento.path_of("env/python/requirements.txt")) as handle:
        locked = handle.read()
    assert "nvidia-cudnn" in locked and "nvidia-cuda-runtime" in locked  # the CUDA libraries its extras pin
    info, config = bento_service_config(bento)
    assert info["service"] == "services.pipelines:PipelinesOnGPU"
    assert config["resources"]["gpu"] == 1
    with open(bento.path_of("env/docker/Dockerfile")) as handle:
        assert "PIPELINES_PROVIDER=cuda" in handle.read().replace('"', "")
    # Served on this machine (CPU-only onnxruntime, no GPU) with the Bento's provider setting, it must
    # stop with the reason instead of quietly serving on the CPU.
    completed = subprocess.run(
        [BENTOML, "serve", str(bento.tag), "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=tmp_path, env={**os.environ, "PIPELINES_PROVIDER": "cuda"}, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0
    assert "CUDA was requested" in completed.stdout + completed.stderr


def test_built_bento_serves_every_model_as_fastai_predicts(served_bento, runs, latest_tags, tmp_path):
    from tests.test_siamese_service import fastai_probability_same, pair_files
    from tests.test_tabular_service import records_of

    with PipelinesClient(served_bento) as client:
        assert client.ready()
        models = client.models()
        assert {task: models[task]["model"] for task in TASKS} == latest_tags
        assert {models[task]["provider"] for task in TASKS} == {"CPUExecutionProvider"}

        task, result = runs["siamese"]
        for first, second in pair_files(result, tmp_path):
            answer = client.compare(first, second)
            assert abs(answer.probability_same - fastai_probability_same(task, result.learn, first, second)) <= 1e-4
            assert answer.model == latest_tags["siamese"]

        _, result = runs["unet"]
        scene = Image.open(sorted(result.learn.dls.valid_ds.items)[0]).convert("RGB").resize((150, 100))
        scene.save(tmp_path / "scene.png")
        probabilities, _ = result.learn.get_preds(dl=result.learn.dls.test_dl([tmp_path / "scene.png"], bs=1))
        mask = client.segment(tmp_path / "scene.png")
        np.testing.assert_array_equal(np.asarray(mask), probabilities[0].argmax(dim=0).numpy())
        summary = client.segmentation_summary(scene)
        assert (summary.width, summary.height) == (150, 100)
        assert sum(c.pixels for c in summary.classes) == 150 * 100
        assert client.overlay(scene).size == (150, 100)

        _, result = runs["text"]
        texts = ["This coffee was GREAT!!! fresh and tasty <br /> would buy again", "stale bland soggy"]
        batch = client.classify_batch(texts)
        labels = result.manifest.labels
        for served, text in zip(batch.predictions, texts):
            _, _, expected = result.learn.predict(text)
            assert max(abs(served.probabilities[l] - float(p)) for l, p in zip(labels, expected)) <= 1e-4
        assert client.classify(texts[0]).predictions[0] == batch.predictions[0]

        import palmerpenguins

        _, result = runs["tabular"]
        frame = palmerpenguins.load_penguins().sample(20, random_state=5).reset_index(drop=True)
        expected, _ = result.learn.get_preds(dl=result.learn.dls.test_dl(frame.drop(columns=["species"])))
        served = client.predict_records(records_of(frame))
        labels = result.manifest.labels
        for prediction, row in zip(served.predictions, expected.numpy()):
            assert max(abs(prediction.probabilities[l] - float(p)) for l, p in zip(labels, row)) <= 1e-5

        _, result = runs["classifier"]
        images = [Path(item[0]) for item in result.learn.dls.valid_ds.items[:3]]
        expected, _ = result.learn.get_preds(dl=result.learn.dls.test_dl(images, bs=3))
        served = client.classify_images(images, k=3)
        for prediction, row in zip(served.predictions, expected.numpy()):
            assert len(prediction.top) == 3 and abs(prediction.top[0].probability - float(row.max())) <= 1e-4
            for entry in prediction.top:
                assert abs(entry.probability - float(row[result.manifest.labels.index(entry.label)])) <= 1e-4
        assert client.classify_image(images[0], k=2).predictions[0].top == served.predictions[0].top[:2]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.compare(b"not an image", b"\x89PNG\r\n\x1a\nbroken"), "image_a: not a recognised image format"),
        (lambda c: c.segment(b""), "image: the upload is empty"),
        (lambda c: c.classify("   "), "text: the text is empty"),
        (lambda c: c.classify_batch([]), "texts"),
        (lambda c: c.predict_records([{"island": "Biscoe"}]), "records.0.bill_length_mm: Field required"),
        (lambda c: c.classify_image(b"GIF89a broken"), "image: not a recognised image format"),
        (lambda c: c.classify_images([Image.new("RGB", (9, 9)), b"nope"]), "images[1]: not a recognised image format"),
        (lambda c: c.classify_image(Image.new("RGB", (9, 9)), k=0), "k: Input should be greater than or equal to 1"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem_and_the_bento_keeps_serving(served_bento, call, message):
    with PipelinesClient(served_bento) as client:
        with pytest.raises(PipelinesRequestError) as raised:
            call(client)
        assert raised.value.status == 400
        assert message in raised.value.message
        assert client.predict_records([PENGUIN]).predictions[0].prediction in {"Adelie", "Chinstrap", "Gentoo"}


def test_every_registered_route_is_served_and_has_a_client_method():
    """The all-models service is assembled from the serving registry; the client covers every route."""
    import inspect

    import services.client
    from services.pipelines import Pipelines
    from services.registry import SERVED_TASKS

    routes = {api.route for api in Pipelines.apis.values()}
    assert {route.split("/")[1] for route in routes} == {*SERVED_TASKS, "models"}
    client_source = inspect.getsource(services.client)
    assert all(f'"{route}"' in client_source for route in routes), routes
    task_services = {served.service.name for served in SERVED_TASKS.values()}
    assert task_services == set(SERVED_TASKS)
    assert not [route for route in routes if route.split("/")[-1] in {"compare_pairs", "class_mask", "score_token_ids"}]


def test_python_client_needs_no_server_side_packages():
    code = ("import sys, services.client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnxruntime', 'bentoml', 'torch', 'fastai'}))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"



def test_a_built_bento_keeps_its_pinned_versions_after_latest_moves(cpu_bento, runs, latest_tags, tmp_path):
    from tests.test_cli import run_cli

    _, result = runs["tabular"]
    assert run_cli("register", str(result.output_dir)).returncode == 0
    moved = str(bentoml.models.get("tabular:latest").tag)
    assert moved != latest_tags["tabular"]
    try:
        with bentoml_server(str(cpu_bento.tag), env={"PIPELINES_PROVIDER": "cpu"}, cwd=tmp_path, timeout=120) as url:
            with PipelinesClient(url) as client:
                assert client.models()["tabular"]["model"] == latest_tags["tabular"]
    finally:
        bentoml.models.delete(moved)  # later modules expect tabular:latest to be the fixture's model
