"""The services' response models: shared by the services and by the Python client (services/client.py),
which imports nothing else of the server side (no ONNX Runtime, no model store)."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, Field


class SiamesePrediction(BaseModel):
    same: bool = Field(description="True when the two images show the same class")
    probability_same: float = Field(ge=0, le=1)
    probabilities: dict[str, float]
    model: str
    provider: str


class ClassCoverage(BaseModel):
    index: int
    name: str
    pixels: int
    coverage: float


class SegmentationSummary(BaseModel):
    width: int
    height: int
    classes: list[ClassCoverage]
    model: str
    provider: str


class TextPrediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    tokens: int = Field(description="how many tokens the model read")


class TextResponse(BaseModel):
    predictions: list[TextPrediction]
    model: str
    provider: str


class TabularPrediction(BaseModel):
    prediction: Union[str, float] = Field(description="the class, or the value for a regression model")
    probabilities: Optional[dict[str, float]] = None


class TabularResponse(BaseModel):
    predictions: list[TabularPrediction]
    model: str
    provider: str


class LabelProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class ImageClassification(BaseModel):
    label: str = Field(description="the most probable class")
    top: list[LabelProbability] = Field(description="the k most probable classes, most probable first")


class ClassifierResponse(BaseModel):
    predictions: list[ImageClassification] = Field(description="one per uploaded image, in upload order")
    model: str
    provider: str
