"""Tabular: fastai's tabular_learner, two-input ONNX, parity, and bit-equal serving preprocessing."""

import json
import math

import numpy as np
import onnx
import pandas as pd
import pytest

from pipelines.run import train_and_export
from pipelines.errors import PipelineError
from pipelines.tasks.tabular import class_labels, usable_categorical, usable_continuous
from services.manifest import MODEL_FILE, Manifest
from services.runtime import create_session
from services.tabular_preprocessing import RecordError, encode_records
from tests.conftest import SHARED_DATASETS
from tests.helpers import TINY_TABULAR_OPTIONS

pytestmark = pytest.mark.slow


def penguins():
    import palmerpenguins

    return palmerpenguins.load_penguins()


def test_parity_covers_unseen_categories_and_missing_values(tabular_run):
    _, result = tabular_run
    report = json.loads((result.output_dir / "parity.json").read_text())
    assert report["passed"]
    names = [case["name"] for case in report["cases"]]
    assert names[0] == "first row" and names[1] == "first 7 rows"
    assert "unseen categories and missing values" in names
    for case in report["cases"]:
        assert case["argmax_agreement"] == 1.0
        assert case["logits_max_abs_error"] <= 1e-5
    assert report["preprocessing"]["max_abs_error"] == 0.0


def test_manifest_holds_fastai_preprocessing_state(tabular_run):
    _, result = tabular_run
    spec = Manifest.read(result.output_dir).preprocessing
    assert spec.kind == "tabular" and spec.target == "species" and spec.target_type == "classification"
    assert spec.cat_names == ["island", "sex"]
    assert spec.cont_names == ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
    # FillMissing: the four measurements with NaN in training get a fill value and an _na indicator.
    assert set(spec.fill_values) == {"bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"}
    assert spec.x_cat_columns == ["island", "sex", *(f"{c}_na" for c in spec.fill_values)]
    assert spec.categories["island"] == ["#na#", "Biscoe", "Dream", "Torgersen"]
    assert spec.categories["bill_length_mm_na"] == ["#na#", False, True]
    assert result.manifest.labels == ["Adelie", "Chinstrap", "Gentoo"]


def test_serving_encoding_is_bit_equal_to_fastai_on_awkward_rows(tabular_run):
    task, result = tabular_run
    spec = result.manifest.preprocessing
    frame = penguins().drop(columns=["species"]).sample(40, random_state=1).reset_index(drop=True)
    frame.loc[0, "island"] = "Atlantis"
    frame.loc[1, "sex"] = None
    frame.loc[2, "bill_length_mm"] = np.nan
    frame.loc[3, ["bill_depth_mm", "body_mass_g"]] = np.nan
    expected_cat, expected_cont = task.fastai_tensors(result.learn.dls, frame)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
               for row in frame.to_dict(orient="records")]
    served_cat, served_cont = encode_records(records, spec)
    np.testing.assert_array_equal(served_cat, expected_cat)
    np.testing.assert_array_equal(served_cont, expected_cont)
    assert served_cat[0, 0] == 0 and served_cat[1, 1] == 0  # unseen and missing are #na#
    assert served_cat[2, spec.x_cat_columns.index("bill_length_mm_na")] == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"year": None}, "record 0, column 'year': no value; the model saw no missing values"),
        ({"body_mass_g": "heavy"}, "record 0, column 'body_mass_g': expected a number, got str"),
        ({"flipper_length_mm": True}, "expected a number, got bool"),
    ],
)
def test_bad_records_name_the_record_and_column(tabular_run, change, message):
    _, result = tabular_run
    record = {"island": "Dream", "bill_length_mm": 40.1, "bill_depth_mm": 18.0, "flipper_length_mm": 190.0,
              "body_mass_g": 3700.0, "sex": "female", "year": 2008}
    with pytest.raises(RecordError, match=message):
        encode_records([record, {**record, **change}][1:], result.manifest.preprocessing)


def test_missing_column_is_named(tabular_run):
    _, result = tabular_run
    with pytest.raises(RecordError, match="record 0, column 'bill_length_mm': missing column"):
        encode_records([{"island": "Dream"}], result.manifest.preprocessing)


def _train_on(frame, tmp_path, name, **options):
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    task_options = dict(TINY_TABULAR_OPTIONS, data=str(path), register=False, output=tmp_path / name, **options)
    from pipelines.registry import get_task

    return train_and_export(get_task("tabular"), task_options)


@pytest.mark.parametrize("kind", ["no categorical columns", "no continuous columns"])
def test_zero_width_input_exports_and_runs(kind, tmp_path):
    frame = penguins().dropna().reset_index(drop=True)
    if kind == "no categorical columns":
        frame = frame[["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "species"]]
    else:
        frame = frame[["island", "sex", "species"]]
    result = _train_on(frame, tmp_path, "zero", target="species")
    assert result.parity.passed, result.parity.failures()
    model = onnx.load(str(result.output_dir / MODEL_FILE))
    assert [i.name for i in model.graph.input] == ["x_cat", "x_cont"]
    spec = result.manifest.preprocessing
    records = frame.drop(columns=["species"]).head(5).to_dict(orient="records")
    x_cat, x_cont = encode_records(records, spec)
    width = x_cat.shape[1] if kind == "no categorical columns" else x_cont.shape[1]
    assert width == 0
    outputs = create_session(result.output_dir / MODEL_FILE, "cpu").run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]
    assert outputs.shape == (5, 3) and np.isfinite(outputs).all()


def test_boolean_and_integer_categories_export_and_encode_like_fastai(tmp_path):
    """The parity case of unseen categories writes a string into every categorical column, bool and int too."""
    frame = penguins()[["island", "sex", "year", "bill_length_mm", "flipper_length_mm", "body_mass_g", "species"]]
    frame = frame.assign(heavy=frame["body_mass_g"] > 4000)
    result = _train_on(frame, tmp_path, "typed", target="species", cat_names="island,sex,year,heavy")
    assert result.parity.passed, result.parity.failures()
    spec = result.manifest.preprocessing
    assert spec.categories["heavy"][1:] == [False, True] and 2007 in spec.categories["year"]
    records = [dict(island="Dream", sex="male", year=2008, heavy=True, bill_length_mm=45.0,
                    flipper_length_mm=200.0, body_mass_g=4100.0),
               dict(island="Dream", sex="male", year=1999, heavy=None, bill_length_mm=45.0,
                    flipper_length_mm=200.0, body_mass_g=4100.0)]
    x_cat, _ = encode_records(records, spec)
    columns = spec.x_cat_columns
    assert x_cat[0, columns.index("heavy")] == spec.categories["heavy"].index(True)
    assert x_cat[1, columns.index("year")] == 0 and x_cat[1, columns.index("heavy")] == 0  # fastai's #na#


def test_whole_number_classes_keep_their_spelling():
    # pandas reads a column of whole numbers with an empty cell as floats; the rows without a label are dropped
    assert list(class_labels(pd.Series([5.0, 1.0, 5.0]))) == ["5", "1", "5"]
    assert list(class_labels(pd.Series([0.5, 1.0]))) == ["0.5", "1.0"]
    assert list(class_labels(pd.Series(["great", "other"]))) == ["great", "other"]
    assert list(class_labels(pd.Series([True, False]))) == ["True", "False"]


def test_continuous_columns_that_would_train_to_nan_are_left_out_or_refused(capsys):
    frame = pd.DataFrame({"size": [1.0, 2.0, 3.0, 4.0], "empty": [np.nan, np.nan, np.nan, 5.0], "flat": 3.0})
    training = frame.head(3)  # the last row is validation: "empty" has no value to fill with in training
    assert usable_continuous(frame, training, ["size", "empty", "flat"], named=False) == ["size", "flat"]
    assert "left out empty: no value in the training rows" in capsys.readouterr().out
    with pytest.raises(PipelineError, match="--cont-names: empty has no value in the training rows"):
        usable_continuous(frame, training, ["size", "empty"], named=True)
    with pytest.raises(PipelineError, match="size hold infinite values"):
        usable_continuous(frame.assign(size=[1.0, np.inf, 3.0, 4.0]), training, ["size"], named=False)


def test_inferred_categories_that_tell_every_row_apart_are_left_out(capsys):
    """A passenger list's names, ticket ids or free text: a different value in nearly every training row."""
    rows = 60
    training = pd.DataFrame({"name": [f"Person {n}" for n in range(rows)], "sex": ["f", "m"] * (rows // 2),
                             "note": [f"note {n}" if n % 2 else None for n in range(rows)]})
    assert usable_categorical(training, ["name", "sex", "note"], named=False) == ["sex", "note"]  # 30 notes: too few
    assert "left out name: a different value in nearly every training row" in capsys.readouterr().out
    assert usable_categorical(training, ["name", "sex"], named=True) == ["name", "sex"]  # --cat-names keeps them


def test_parquet_with_typed_columns(tmp_path):
    """Parquet keeps pandas' types: category, datetime, int32 and float32 columns train, verify and encode."""
    frame = penguins().dropna().reset_index(drop=True)
    frame = frame.assign(island=frame["island"].astype("category"), year=frame["year"].astype("int32"),
                         body_mass_g=frame["body_mass_g"].astype("float32"),
                         seen=pd.Timestamp("2020-01-01") + pd.to_timedelta(frame.index % 3, unit="D"))
    path = tmp_path / "penguins.parquet"
    frame.to_parquet(path)
    from pipelines.registry import get_task

    result = train_and_export(get_task("tabular"), dict(TINY_TABULAR_OPTIONS, data=str(path), target="species",
                                                        register=False, output=tmp_path / "out"))
    assert result.parity.passed, result.parity.failures()
    spec = result.manifest.preprocessing
    assert spec.categories["seen"][1:] == ["2020-01-01", "2020-01-02", "2020-01-03"]
    record = {**frame.drop(columns=["species"]).iloc[0].to_dict(), "island": "Biscoe", "seen": "2020-01-02"}
    x_cat, _ = encode_records([record], spec)
    assert x_cat[0, spec.x_cat_columns.index("seen")] == 2


def test_validation_rows_of_a_class_training_never_saw_are_left_out(tmp_path, capsys):
    frame = penguins().dropna().reset_index(drop=True)
    train, valid = frame.iloc[::2], frame.iloc[1::2].copy()
    valid.iloc[:3, valid.columns.get_loc("species")] = "Emperor"  # fastai failed on them minutes into training
    train.to_csv(tmp_path / "train.csv", index=False)
    valid.to_csv(tmp_path / "valid.csv", index=False)
    from pipelines.registry import get_task

    result = train_and_export(get_task("tabular"), dict(
        TINY_TABULAR_OPTIONS, data=str(tmp_path / "train.csv"), valid_data=tmp_path / "valid.csv", target="species",
        register=False, output=tmp_path / "out"))
    assert "left out 3 validation row(s) of class(es) no training row has: 'Emperor'" in capsys.readouterr().out
    assert result.parity.passed and result.manifest.labels == ["Adelie", "Chinstrap", "Gentoo"]
    assert result.parity.cases[2].name == f"validation set ({len(valid) - 3})"


def test_regression_target(tmp_path):
    frame = penguins()[["island", "sex", "bill_length_mm", "flipper_length_mm", "body_mass_g"]]
    result = _train_on(frame, tmp_path, "regression", target="body_mass_g")
    assert result.manifest.preprocessing.target_type == "regression"
    assert result.parity.passed, result.parity.failures()
    whole = result.parity.cases[2]
    assert whole.metrics["rmse"]["pytorch"] == pytest.approx(whole.metrics["rmse"]["onnx"], rel=1e-5)


ADULT = SHARED_DATASETS / "adult"


@pytest.mark.skipif(not (ADULT / "adult_train.csv").exists(), reason="../shared/datasets/adult is not present")
def test_adult_sample_beats_majority_class(tmp_path):
    train = pd.read_csv(ADULT / "adult_train.csv").sample(6000, random_state=0)
    valid = pd.read_csv(ADULT / "adult_test.csv").sample(2000, random_state=0)
    train.to_csv(tmp_path / "train.csv", index=False)
    valid.to_csv(tmp_path / "valid.csv", index=False)
    from pipelines.registry import get_task

    options = dict(TINY_TABULAR_OPTIONS, data=str(tmp_path / "train.csv"), valid_data=tmp_path / "valid.csv",
                   target="salary", epochs=2, register=False, output=tmp_path / "adult")
    result = train_and_export(get_task("tabular"), options)
    whole = result.parity.cases[2]
    majority = (valid["salary"] == "<=50K").mean()
    accuracy = whole.metrics["accuracy"]
    assert accuracy["pytorch"] > majority + 0.04
    assert accuracy["onnx"] == accuracy["pytorch"]
    assert result.parity.passed


def test_failed_parity_registers_nothing_and_latest_stays(tabular_run, tmp_path):
    """A real run whose tolerance nothing can meet: typed error, artifact kept for inspection, store untouched."""
    import dataclasses

    import bentoml

    from export.errors import ToleranceExceededError
    from pipelines.registry import get_task

    task = get_task("tabular")
    strict = dataclasses.replace(task.onnx_config.tolerance, logits_atol=0.0, logits_rtol=0.0)
    task.onnx_config = dataclasses.replace(task.onnx_config, tolerance=strict)
    latest, count = bentoml.models.get("tabular:latest").tag, len(bentoml.models.list("tabular"))
    with pytest.raises(ToleranceExceededError):
        train_and_export(task, dict(TINY_TABULAR_OPTIONS, output=tmp_path / "strict"))
    assert bentoml.models.get("tabular:latest").tag == latest
    assert len(bentoml.models.list("tabular")) == count
    assert json.loads((tmp_path / "strict" / "parity.json").read_text())["passed"] is False


def test_training_on_the_embedded_data_learns(tabular_run):
    """Seconds of training on the embedded penguins, in a fresh clone: far above the majority class."""
    import palmerpenguins

    _, result = tabular_run
    species = palmerpenguins.load_penguins()["species"]
    majority = species.value_counts(normalize=True).max()  # Adelie, about 0.44
    accuracy = result.manifest.metrics["training"]["accuracy"]
    assert accuracy > majority + 0.3, (accuracy, majority)
