"""Siamese service: two image files in, "same class or not" out."""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from services.images import image_to_tensor
from services.uploads import read_upload
from services.loading import ServedModel, check_provider_configuration, model_tag, softmax

TASK = "siamese"
check_provider_configuration()


class SiamesePrediction(BaseModel):
    same: bool = Field(description="True when the two images show the same class")
    probability_same: float = Field(ge=0, le=1)
    probabilities: dict[str, float]
    model: str
    provider: str


@bentoml.service(name="siamese", traffic={"timeout": 60})
class SiameseService:
    model_ref = bentoml.models.BentoModel(model_tag(TASK))

    def __init__(self) -> None:
        self.model = ServedModel.from_store(self.model_ref, TASK)
        self.spec = self.model.manifest.preprocessing

    @bentoml.api
    def predict(self, image_a: Path, image_b: Path) -> SiamesePrediction:
        """Compare two images (multipart files `image_a` and `image_b`)."""
        first = read_upload(image_a, "image_a", self.spec.color_mode)
        second = read_upload(image_b, "image_b", self.spec.color_mode)
        names = self.model.manifest.input_names()
        logits = self.model.run({
            names[0]: image_to_tensor(first, self.spec)[None],
            names[1]: image_to_tensor(second, self.spec)[None],
        })
        probabilities = softmax(logits)[0]
        labels = self.model.manifest.labels
        same_index = labels.index("same")
        return SiamesePrediction(
            same=bool(np.argmax(probabilities) == same_index),
            probability_same=float(probabilities[same_index]),
            probabilities={label: float(p) for label, p in zip(labels, probabilities)},
            model=self.model.tag,
            provider=self.model.provider,
        )

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, input/output specs and training metrics."""
        return self.model.info()
