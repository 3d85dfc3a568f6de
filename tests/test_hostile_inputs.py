"""The all-models Bento as a hostile client would try it: every file endpoint with its file under the wrong
field name, tabular records with non-finite and overflowing numbers, a corpus of malformed bodies, and
property-based records and texts (Hypothesis). The bar: no 5xx, every 4xx naming what was wrong, and a
good request still answered after each bad one."""

import json
import math
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.client import example_image, example_requests
from tests.helpers import bentoml_server

pytestmark = pytest.mark.slow
PENGUIN = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230,
           "body_mass_g": 5800, "sex": "male", "year": 2009}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile") / "serve.log"


@pytest.fixture(scope="module")
def bento(siamese_run, unet_run, text_run, tabular_run, classifier_run, server_log):
    with bentoml_server("services.pipelines:Pipelines", env={"PIPELINES_PROVIDER": "cpu"}, timeout=180,
                        log_path=server_log) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http


@pytest.fixture(scope="module")
def good_requests(bento):
    return example_requests(bento.post("/models").json())


def error_text(response: httpx.Response) -> str:
    return json.dumps(response.json())


def assert_one_error_shape(response: httpx.Response) -> None:
    """{"error": "<one line>", "detail": [...]}, never wrapped in a list."""
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"].strip() and "\n" not in body["error"]
    assert isinstance(body["detail"], list)


def file_endpoints(bento) -> dict[str, list[str]]:
    """Every route whose request is multipart, with its file fields, from the OpenAPI document."""
    document = bento.get("/docs.json").json()
    endpoints = {}
    for route, methods in document["paths"].items():
        content = methods.get("post", {}).get("requestBody", {}).get("content", {})
        schema = content.get("multipart/form-data", {}).get("schema")
        if schema is None:
            continue
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].split("/")[-1]]
        fields = [name for name, spec in schema.get("properties", {}).items()
                  if spec.get("format") == "binary" or spec.get("items", {}).get("format") == "binary"]
        if fields:
            endpoints[route] = fields
    return endpoints


def test_a_file_under_another_field_name_is_a_400_naming_the_field_on_every_file_endpoint(bento, good_requests):
    endpoints = file_endpoints(bento)
    assert {"/siamese/predict", "/unet/segment", "/unet/summary", "/unet/overlay", "/classifier/predict",
            "/classifier/predict_batch"} <= set(endpoints)
    for route, fields in endpoints.items():
        response = bento.post(route, files={"picture": ("p.png", example_image())})
        assert response.status_code == 400, (route, response.status_code, response.text)
        assert_one_error_shape(response)
        for field in fields:
            assert field in error_text(response), (route, response.text)
        assert "picture" in error_text(response)
    for route, call in good_requests.items():
        assert call(bento).status_code == 200, route


@pytest.mark.parametrize("text", ["hello", "https://example.com/cat.png", "http://127.0.0.1:9/a.png"])
def test_text_where_a_file_belongs_is_a_400_naming_the_field_and_nothing_is_fetched(bento, good_requests, text):
    """BentoML would take the text for a URL and download it on the client's behalf (a 500 when it fails)."""
    for route, fields in file_endpoints(bento).items():
        text_field, *file_fields = fields
        files = {text_field: (None, text), **{field: ("i.png", example_image()) for field in file_fields}}
        response = bento.post(route, files=files)
        assert response.status_code == 400, (route, response.status_code, response.text)
        assert_one_error_shape(response)
        assert response.json()["error"].startswith(f"{text_field}: expected a file upload"), (route, response.text)
    assert good_requests["/siamese/predict"](bento).status_code == 200


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "1e400", "-1e400", "1e300"])
def test_tabular_non_finite_or_overflowing_numbers_are_a_400_naming_record_and_column(bento, value):
    body = '{"records": [%s, %s]}' % (json.dumps(PENGUIN), json.dumps(PENGUIN).replace('"bill_length_mm": 48.6',
                                                                                         f'"bill_length_mm": {value}'))
    response = bento.post("/tabular/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "record 1" in response.text and "bill_length_mm" in response.text


def test_tabular_nan_means_missing_like_null(bento):
    with_nan = json.dumps({"records": [PENGUIN]}).replace('"bill_length_mm": 48.6', '"bill_length_mm": NaN')
    with_null = json.dumps({"records": [{**PENGUIN, "bill_length_mm": None}]})
    answers = [bento.post("/tabular/predict", content=body, headers={"content-type": "application/json"})
               for body in (with_nan, with_null)]
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert answers[0].json()["predictions"] == answers[1].json()["predictions"]


def png_of_size(width: int, height: int) -> bytes:
    """A PNG of one colour: a few kilobytes on the wire, width x height pixels once decoded."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BOMB = png_of_size(9000, 9000)  # 81 million pixels from a small file: over PIPELINES_MAX_IMAGE_PIXELS (40 million)

MALFORMED = [
    ("/unet/segment", {"files": {"image": ("bomb.png", BOMB)}}),
    ("/unet/summary", {"files": {"image": ("bomb.png", BOMB)}}),
    ("/siamese/predict", {"files": {"image_a": ("bomb.png", BOMB), "image_b": ("b.png", example_image())}}),
    ("/text/classify_batch", {"json": {"texts": ["fine"] * 65}}),  # TEXT_MAX_BATCH is 64
    ("/tabular/predict", {"content": b"island=Biscoe", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
    ("/tabular/predict", {"content": b"not json", "headers": {"content-type": "application/json"}}),
    ("/tabular/predict", {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}}),
    ("/tabular/predict", {"content": b'{"records": 5}', "headers": {"content-type": "application/json"}}),
    ("/tabular/predict", {"content": b'{"records": [[1, 2]]}', "headers": {"content-type": "application/json"}}),
    ("/tabular/predict", {"content": b"[" * 5000, "headers": {"content-type": "application/json"}}),
    ("/text/classify", {"content": b'{"text": 12}', "headers": {"content-type": "application/json"}}),
    ("/text/classify", {"content": b'{"txt": "hi"}', "headers": {"content-type": "application/json"}}),
    ("/text/classify", {"content": b"", "headers": {"content-type": "application/json"}}),
    ("/text/classify", {"files": {"text": ("t.bin", b"\x00\xff\x10")}}),
    ("/text/classify_batch", {"content": b'{"texts": []}', "headers": {"content-type": "application/json"}}),
    ("/siamese/predict", {"files": {"image_a": ("a.png", b"not an image"), "image_b": ("b.png", example_image())}}),
    ("/siamese/predict", {"files": {"image_a": ("a.png", example_image())}}),
    ("/siamese/predict", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
    ("/unet/segment", {"files": {"image": ("i.png", example_image()[:100])}}),
    ("/classifier/predict", {"files": {"image": ("big.png", b"\x89PNG" + bytes(21 * 1024 * 1024))}}),  # > 20 MB
    ("/unet/summary", {"files": {"image": ("i.png", b"")}}),
    ("/unet/overlay", {"files": {"image": ("i.png", b"GIF89a" + b"\x00" * 20)}}),
    ("/classifier/predict", {"files": {"image": ("i.png", example_image())}, "data": {"k": "0"}}),
    ("/classifier/predict", {"files": {"image": ("i.png", example_image())}, "data": {"k": "many"}}),
    ("/classifier/predict_batch", {"files": {"image": ("i.png", example_image())}}),
]


@pytest.mark.parametrize("route,request_args", MALFORMED, ids=[f"{r}-{n}" for n, (r, _) in enumerate(MALFORMED)])
def test_malformed_bodies_are_4xx_and_the_server_keeps_serving(bento, good_requests, route, request_args):
    response = bento.post(route, **request_args)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert_one_error_shape(response)
    assert good_requests["/text/classify"](bento).status_code == 200


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(st.sampled_from(sorted(PENGUIN) + ["extra"]), json_scalars, max_size=4))
def test_any_tabular_record_gets_a_finite_answer_or_a_4xx(bento, changes):
    record = {**PENGUIN, **changes}
    body = json.dumps({"records": [record]}, allow_nan=True)
    response = bento.post("/tabular/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 422), (response.status_code, response.text[:300], body)
    if response.status_code == 200:
        for prediction in response.json()["predictions"]:
            assert all(p is not None and math.isfinite(p) for p in prediction["probabilities"].values())
    else:
        assert_one_error_shape(response)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=300))
def test_any_text_gets_an_answer_or_a_4xx(bento, text):
    response = bento.post("/text/classify", json={"text": text})
    assert response.status_code in (200, 400), (response.status_code, response.text[:300])
    if response.status_code == 200:
        probabilities = response.json()["predictions"][0]["probabilities"]
        assert all(math.isfinite(p) for p in probabilities.values())


def test_get_models_lists_every_task_with_provider_and_precision(bento):
    models = bento.get("/models").json()
    assert set(models) == {"siamese", "unet", "text", "tabular", "classifier"}
    for info in models.values():
        assert info["provider"] == "CPUExecutionProvider" and info["precision"] in ("fp32", "int8")
        assert info["labels"] and info["inputs"] and "metrics" in info
    assert bento.post("/models").json() == models
    assert_one_error_shape(bento.get("/no/such/route"))


def test_the_server_log_has_each_bad_request_in_one_warning_line_and_no_traceback(bento, server_log):
    """Operators' alerts watch ERROR lines and tracebacks: a client's bad input must not raise them."""
    bento.post("/siamese/predict", files={"image_a": ("a.png", example_image()), "image_b": ("b.png", b"not an image")})
    bento.post("/tabular/predict", json={"records": [{"island": "Biscoe"}]})
    expected = ["Client error 400 on /siamese/predict [POST]: image_b: not a recognised image format",
                "Client error 400 on /tabular/predict [POST]: records.0.bill_length_mm: Field required"]
    deadline = time.time() + 10
    while not all(line in server_log.read_text() for line in expected) and time.time() < deadline:
        time.sleep(0.2)
    log = server_log.read_text()
    assert all(line in log for line in expected), log[-3000:]
    assert "Traceback" not in log and "Exception on" not in log, log[-3000:]


def test_a_good_request_after_all_of_it(bento, good_requests):
    for route, call in good_requests.items():
        response = call(bento)
        assert response.status_code == 200, (route, response.text[:300])
        if response.headers["content-type"].startswith("application/json"):
            assert response.json()["precision"] == "fp32"
