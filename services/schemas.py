"""The services' response models: shared by the services and by the Python client (services/client.py),
which imports nothing else of the server side (no ONNX Runtime, no model store)."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, Field


class ServedBy(BaseModel):
    """What every response says about the model that answered."""

    model: str = Field(description="the model's tag in the model store")
    provider: str = Field(description="the ONNX Runtime execution provider in use")
    precision: str = Field(description="fp32, or int8 where the model passed its accuracy gate")


class SiamesePrediction(ServedBy):
    same: bool = Field(description="True when the two images show the same class")
    probability_same: float = Field(ge=0, le=1)
    probabilities: dict[str, float]


class ClassCoverage(BaseModel):
    index: int
    name: str
    pixels: int
    coverage: float


NOT_SEEN = 255  # U-Net mask value of upload pixels the model did not see; class indices stay below it


class SegmentationSummary(ServedBy):
    width: int
    height: int
    classes: list[ClassCoverage]
    not_seen_pixels: int = Field(0, description="upload pixels the model did not see (its Resize cropped them "
                                                "off); 255 in the mask")


class TextPrediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    tokens: int = Field(description="how many tokens the model read")


class TextResponse(ServedBy):
    predictions: list[TextPrediction]


class TabularPrediction(BaseModel):
    prediction: Union[str, float] = Field(description="the class, or the value for a regression model")
    probabilities: Optional[dict[str, float]] = None


class TabularResponse(ServedBy):
    predictions: list[TabularPrediction]


class LabelProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class ImageClassification(BaseModel):
    label: str = Field(description="the most probable class")
    top: list[LabelProbability] = Field(description="the k most probable classes, most probable first")


class ClassifierResponse(ServedBy):
    predictions: list[ImageClassification] = Field(description="one per uploaded image, in upload order")
