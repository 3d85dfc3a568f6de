"""`pipelines predict`: the command-line client. Against a running Bento (`--url`, through the typed
client in services/client.py) or in this process from the model store (`--model TAG`, the services'
own handlers over ONNX Runtime: the same preprocessing and answers, no server, no fastai)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable

import click

from pipelines.data import read_text_file
from pipelines.errors import PipelineError

CSV_CHUNK = 1000  # records per request: well within TABULAR_MAX_RECORDS (4096 by default)


class LocalModel:
    """One registered model served in this process, with the typed client's method names."""

    def __init__(self, tag: str, task: str):
        import bentoml

        from services.manifest import Manifest
        from services.registry import SERVED_TASKS

        try:
            stored = bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            raise PipelineError(f"--model {tag}: no such model in the BentoML store; `bentoml models list` "
                                "shows them") from None
        found = Manifest.read(Path(stored.path)).task
        if found != task:
            raise PipelineError(f"--model {tag} is a {found!r} model; use `pipelines predict ... {found}`")
        self.handler = SERVED_TASKS[task].handler.from_store(stored)

    def close(self) -> None:
        pass

    def compare(self, image_a, image_b):
        return self.handler.predict(Path(image_a), Path(image_b))

    def segment(self, image):
        return self.handler.segment(Path(image))

    def classify_batch(self, texts: list[str]):
        return self.handler.classify(texts)

    def predict_records(self, records: list[dict]):
        return self.handler.predict(records)

    def classify_images(self, images: list, k: int = 5):
        return self.handler.classify([Path(image) for image in images], k, "images")


def open_predictor(url: str | None, model: str | None, task: str):
    if (url is None) == (model is None):
        raise PipelineError("give --url URL (a running Bento) or --model TAG (a model in the store, in process), "
                            "before the task: pipelines predict --url URL TASK ...")
    if model is not None:
        return LocalModel(model, task)
    from services.client import PipelinesClient

    return PipelinesClient(url)


def failure_line(error: Exception) -> str | None:
    """One line for a refused request, an unreachable server or input a handler refused; None otherwise."""
    import httpx
    from bentoml.exceptions import BentoMLException

    from services.client import PipelinesRequestError

    if isinstance(error, PipelinesRequestError):
        return f"{error.endpoint}: HTTP {error.status}: {error.message}"
    if isinstance(error, httpx.TransportError):
        return f"cannot reach the server: {type(error).__name__} ({error}); is the Bento running?"
    if isinstance(error, BentoMLException):  # the handlers' InvalidArgument, in process
        return str(error)
    return None


def run_prediction(url: str | None, model: str | None, task: str, action):
    """Run `action(predictor)`, with failures as one line (PipelineError)."""
    predictor = open_predictor(url, model, task)
    try:
        return action(predictor)
    except Exception as error:
        line = failure_line(error)
        if line is None:
            raise
        raise PipelineError(line) from None
    finally:
        predictor.close()


def existing(paths: Iterable[Path]) -> list[Path]:
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"no such file: {', '.join(missing)}")
    return paths


def read_texts(texts: tuple[str, ...], file: Path | None) -> list[str]:
    if file is not None:
        if not Path(file).is_file():
            raise PipelineError(f"--file {file}: no such file")
        texts = tuple(line for line in read_text_file(Path(file), "--file").splitlines() if line.strip())
    if not texts:
        raise PipelineError("give one or more texts, or --file FILE with one text per line")
    return list(texts)


def csv_records(path: Path) -> tuple[list[str], list[dict]]:
    """The rows of a CSV as records: numbers as numbers, empty cells as missing (null)."""
    if not Path(path).is_file():
        raise PipelineError(f"--csv {path}: no such file")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if not rows:
        raise PipelineError(f"--csv {path}: no records")
    records = [{key: parse_cell(value) for key, value in row.items()} for row in rows]
    for number, record in enumerate(records, start=1):
        for column, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise PipelineError(f"--csv {path}: row {number}, column {column!r}: {value} is not a finite number "
                                    "(leave the cell empty for a missing value)")
    return columns, records


# What pandas' read_csv, which read the training data, takes as missing and as booleans by default.
MISSING_CELLS = {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
                 "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
BOOLEAN_CELLS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def parse_cell(value: str | None):
    """A CSV cell as the JSON value a client would send, read as pandas read the training CSV."""
    if value is None or value.strip() == "" or value in MISSING_CELLS:
        return None
    if value in BOOLEAN_CELLS:
        return BOOLEAN_CELLS[value]
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        return number if not (isinstance(number, float) and math.isnan(number)) else None
    return value


def predict_csv(predictor, source: Path, target: Path) -> int:
    """Predictions for every row of `source` into `target`: the input's columns, then `prediction` and
    one `probability_<class>` column per class; chunks of CSV_CHUNK records with a progress bar."""
    columns, records = csv_records(source)
    if Path(target).exists():
        raise PipelineError(f"--out {target} already exists; choose a new file (nothing is overwritten)")
    results = []
    with click.progressbar(range(0, len(records), CSV_CHUNK), label=f"{len(records)} records",
                           file=click.get_text_stream("stderr")) as chunks:
        for start in chunks:
            chunk = records[start:start + CSV_CHUNK]
            try:
                answer = predictor.predict_records(chunk)
            except Exception as error:
                line = failure_line(error)
                if line is None:
                    raise
                raise PipelineError(f"CSV rows {start + 1}-{start + len(chunk)} (its record 0 is row {start + 1}): "
                                    f"{line}") from None
            results.extend(answer.predictions)
    classes = list(results[0].probabilities or {})
    header = [*columns, "prediction", *(f"probability_{name}" for name in classes)]
    partial = Path(f"{target}.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for record, result in zip(records, results):
            probabilities = result.probabilities or {}
            writer.writerow([*("" if record.get(c) is None else record.get(c) for c in columns), result.prediction,
                             *(f"{probabilities[name]:.6g}" for name in classes)])
    partial.rename(target)
    return len(results)
