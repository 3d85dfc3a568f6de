"""Tabular service: a list of JSON records in, a prediction per record out.

The request schema is built from the registered model's manifest when the service is imported, so the
OpenAPI document lists every column with its type. Unknown extra keys are ignored (clients often send
whole rows, target included); a missing column, a wrong type, an empty list or too many records is a
400 that names the record and the column.
"""

import os
from typing import Annotated, Any, Optional, Union

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, create_model

from services.loading import ServedTask, TaskHandler, service_model, softmax
from services.manifest import Manifest, TabularPreprocessing
from services.runtime import configured_request_threads
from services.schemas import TabularPrediction, TabularResponse
from services.tabular_preprocessing import RecordError, encode_records

TASK = "tabular"
MAX_RECORDS = int(os.environ.get("TABULAR_MAX_RECORDS", "4096"))
MODEL = service_model(TASK)
# Strict: JSON numbers (integers too), never strings that look like numbers.
Number = StrictFloat


def category_type(classes: list) -> Any:
    values = classes[1:]
    if values and all(isinstance(v, bool) for v in values):
        return Optional[bool]
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return Optional[Number]
    if all(isinstance(v, str) for v in values):
        return Optional[str]
    return Optional[Union[str, Number, bool]]


def record_model(spec: TabularPreprocessing) -> type[BaseModel]:
    """A pydantic model of one record: every input column required (null allowed where fastai fills it)."""
    fields: dict[str, Any] = {}
    for index, column in enumerate(spec.cont_names):
        kind = Optional[Number] if column in spec.fill_values else Number
        fields[f"cont_{index}"] = (kind, Field(alias=column, description=f"continuous; mean {spec.means[column]:.4g}"))
    for index, column in enumerate(spec.cat_names):
        classes = spec.categories[column]
        fields[f"cat_{index}"] = (category_type(classes), Field(
            alias=column, description=f"categorical; {len(classes) - 1} known values, others count as unknown",
            examples=[classes[1]] if len(classes) > 1 else None,
        ))
    return create_model("Record", __config__=ConfigDict(extra="ignore", populate_by_name=False), **fields)


def registered_spec() -> Optional[TabularPreprocessing]:
    stored = MODEL.stored
    return Manifest.read(stored.path).preprocessing if stored is not None else None


_SPEC = registered_spec()
Record = record_model(_SPEC) if _SPEC is not None else dict[str, Any]


Records = Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS)]


class TabularHandler(TaskHandler):
    task = TASK

    def infer(self, x_cat: np.ndarray, x_cont: np.ndarray) -> np.ndarray:
        """Encoded records (category codes, normalised continuous values) to class probabilities, or to
        values for a regression model."""
        outputs = self.model.run({"x_cat": x_cat, "x_cont": x_cont})
        return outputs if self.spec.target_type == "regression" else softmax(outputs)

    def predict(self, records: list) -> TabularResponse:
        rows = [r.model_dump(by_alias=True) if isinstance(r, BaseModel) else r for r in records]
        try:
            x_cat, x_cont = encode_records(rows, self.spec)
        except RecordError as error:
            raise InvalidArgument(str(error)) from None
        outputs = self.infer(x_cat, x_cont)
        not_finite = ~np.isfinite(outputs).all(axis=1)
        if not_finite.any():  # values so far from the training data that float32 arithmetic overflows
            raise InvalidArgument(f"record {int(np.argmax(not_finite))}: the model's output overflows for this "
                                  "record; its values are far outside the range the model was trained on")
        labels = self.manifest.labels
        if self.spec.target_type == "regression":
            predictions = [TabularPrediction(prediction=float(value)) for value in outputs[:, 0]]
        else:
            predictions = [
                TabularPrediction(prediction=labels[int(np.argmax(row))],
                                  probabilities={label: float(p) for label, p in zip(labels, row)})
                for row in outputs
            ]
        return TabularResponse(predictions=predictions, **self.served_by())

    def describe(self) -> dict:
        return {**super().describe(), "cat_names": self.spec.cat_names, "cont_names": self.spec.cont_names,
                "fill_values": self.spec.fill_values, "target": self.spec.target, "target_type": self.spec.target_type,
                "example_record": self.example_record()}

    def example_record(self) -> dict:
        """A record the model takes: each continuous column's training mean, each category's first value."""
        record = {column: self.spec.means[column] for column in self.spec.cont_names}
        record.update({column: (self.spec.categories[column][1:] or [None])[0] for column in self.spec.cat_names})
        return record


class TabularEndpoints:
    """The public endpoints in the all-models Bento (services/pipelines.py)."""

    @bentoml.api(route="/tabular/predict")
    def tabular_predict(self, records: Records) -> TabularResponse:
        """Tabular: a prediction for each record (JSON objects keyed by column name)."""
        return self.handlers[TASK].predict(records)


@bentoml.service(name="tabular", traffic={"timeout": 60}, threads=configured_request_threads())
class TabularService:
    model_ref = MODEL

    def __init__(self) -> None:
        self.handler = TabularHandler.from_store(self.model_ref)

    @bentoml.api
    def predict(self, records: Records) -> TabularResponse:
        """Predict for one or many records (JSON objects keyed by column name)."""
        return self.handler.predict(records)

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, the columns and training metrics."""
        return self.handler.describe()


SERVED = ServedTask(TASK, MODEL, TabularHandler, TabularEndpoints, TabularService)
