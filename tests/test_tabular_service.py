"""End to end: a real `bentoml serve` of the tabular service, JSON records over HTTP."""

import math

import pytest
import requests

from tests.helpers import bentoml_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tabular_run):
    with bentoml_server("services.tabular:TabularService", env={"PIPELINES_PROVIDER": "cpu"}) as url:
        yield url


def records_of(frame):
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def test_served_probabilities_equal_fastai_get_preds(tabular_run, server):
    import palmerpenguins

    task, result = tabular_run
    frame = palmerpenguins.load_penguins().sample(50, random_state=3).reset_index(drop=True)
    frame.loc[0, "island"] = "Atlantis"
    frame.loc[1, "bill_length_mm"] = float("nan")
    learn = result.learn
    expected, _ = learn.get_preds(dl=learn.dls.test_dl(frame.drop(columns=["species"])))
    response = requests.post(f"{server}/predict", json={"records": records_of(frame)}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == result.tag and body["provider"] == "CPUExecutionProvider"
    labels = result.manifest.labels
    assert len(body["predictions"]) == 50
    for served, row in zip(body["predictions"], expected.numpy()):
        assert max(abs(served["probabilities"][label] - float(p)) for label, p in zip(labels, row)) <= 1e-5
        assert served["prediction"] == labels[int(row.argmax())]


def test_single_record_and_extra_columns_are_ignored(server):
    record = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230,
              "body_mass_g": 5800, "sex": "male", "year": 2009, "species": "not used", "colour": "blue"}
    response = requests.post(f"{server}/predict", json={"records": [record]}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


@pytest.mark.parametrize(
    "records, where",
    [
        ([{"island": "Biscoe"}], ["records", 0, "bill_length_mm"]),
        ([{"island": "Biscoe", "bill_length_mm": "long", "bill_depth_mm": 16.0, "flipper_length_mm": 230,
           "body_mass_g": 5800, "sex": "male", "year": 2009}], ["records", 0, "bill_length_mm"]),
        ([{"island": "Biscoe", "bill_length_mm": 40.0, "bill_depth_mm": 16.0, "flipper_length_mm": 230,
           "body_mass_g": 5800, "sex": "male", "year": None}], ["records", 0, "year"]),
        ([], ["records"]),
    ],
)
def test_bad_records_are_400_naming_record_and_column(server, records, where):
    response = requests.post(f"{server}/predict", json={"records": records}, timeout=30)
    assert response.status_code == 400
    assert any(error["loc"][: len(where)] == where for error in response.json()["detail"]), response.text
    alive = requests.post(f"{server}/model_info", json={}, timeout=30)
    assert alive.status_code == 200


def test_too_many_records_is_400(server):
    record = {"island": "Dream", "bill_length_mm": 40.0, "bill_depth_mm": 18.0, "flipper_length_mm": 190,
              "body_mass_g": 3700, "sex": "female", "year": 2008}
    response = requests.post(f"{server}/predict", json={"records": [record] * 4097}, timeout=60)
    assert response.status_code == 400 and "too_long" in response.text


def test_openapi_lists_the_columns(server):
    schema = requests.get(f"{server}/docs.json", timeout=30).json()
    properties = schema["components"]["schemas"]["Record"]["properties"]
    assert set(properties) == {"island", "sex", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                               "body_mass_g", "year"}
    required = set(schema["components"]["schemas"]["Record"]["required"])
    assert {"year", "island"} <= required
