"""Siamese service: two image files in, "same class or not" out."""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np

from services.images import image_to_tensor
from services.loading import RUNNER_CONNECTION, ServedModel, TaskHandler
from services.loading import batching_enabled, check_provider_configuration, model_tag, softmax
from services.schemas import SiamesePrediction
from services.uploads import read_upload

TASK = "siamese"
check_provider_configuration()


class SiameseHandler(TaskHandler):
    INFER = "compare_pairs"

    def predict(self, image_a: Path, image_b: Path) -> SiamesePrediction:
        pair = np.stack([
            image_to_tensor(read_upload(image_a, "image_a", self.spec.color_mode), self.spec),
            image_to_tensor(read_upload(image_b, "image_b", self.spec.color_mode), self.spec),
        ])
        probabilities = np.asarray(self.infer(pair[None]))[0]
        labels = self.manifest.labels
        same_index = labels.index("same")
        return SiamesePrediction(
            same=bool(np.argmax(probabilities) == same_index),
            probability_same=float(probabilities[same_index]),
            probabilities={label: float(p) for label, p in zip(labels, probabilities)},
            model=self.tag,
            provider=self.provider,
        )


@bentoml.service(name="siamese", traffic={"timeout": 60}, runner_connection=RUNNER_CONNECTION)
class SiameseService:
    model_ref = bentoml.models.BentoModel(model_tag(TASK))

    def __init__(self) -> None:
        self.model = ServedModel.from_store(self.model_ref, TASK)
        self.handler = SiameseHandler.local(self)

    @bentoml.api(batchable=batching_enabled(TASK), max_batch_size=64)
    def compare_pairs(self, pairs: np.ndarray) -> np.ndarray:
        """Internal (used by the all-models Bento): preprocessed pairs (N, 2, C, H, W) to class probabilities."""
        names = self.model.manifest.input_names()
        return softmax(self.model.run({name: np.ascontiguousarray(pairs[:, i]) for i, name in enumerate(names)}))

    @bentoml.api
    def predict(self, image_a: Path, image_b: Path) -> SiamesePrediction:
        """Compare two images (multipart files `image_a` and `image_b`)."""
        return self.handler.predict(image_a, image_b)

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, input/output specs and training metrics."""
        return self.model.info()
