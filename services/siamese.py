"""Siamese service: two image files in, "same class or not" out."""

from __future__ import annotations

import bentoml
import numpy as np
from PIL import Image

from services.images import image_to_tensor
from services.loading import ServedTask, TaskHandler, service_model, softmax
from services.runtime import configured_request_threads
from services.schemas import SiamesePrediction
from services.uploads import ImageFile, UploadedFile, read_upload

TASK = "siamese"
MODEL = service_model(TASK)


class SiameseHandler(TaskHandler):
    task = TASK
    # Measured at 32 concurrent clients on 2 cores (README, results log): batching concurrent pairs pays.
    batches_concurrent_requests = True

    def infer(self, pairs: np.ndarray) -> np.ndarray:
        """Preprocessed pairs (N, 2, C, H, W) to class probabilities."""
        names = self.manifest.input_names()
        return softmax(self.model.run({name: np.ascontiguousarray(pairs[:, i]) for i, name in enumerate(names)}))

    def predict(self, image_a: ImageFile, image_b: ImageFile) -> SiamesePrediction:
        mode = self.spec.color_mode
        return self.compare(read_upload(image_a, "image_a", mode), read_upload(image_b, "image_b", mode))

    def compare(self, image_a: Image.Image, image_b: Image.Image) -> SiamesePrediction:
        """Two decoded images to the answer, however the request carried them."""
        pair = np.stack([image_to_tensor(image_a, self.spec), image_to_tensor(image_b, self.spec)])
        probabilities = self.infer_one(pair)
        labels = self.manifest.labels
        same_index = labels.index("same")
        return SiamesePrediction(
            same=bool(np.argmax(probabilities) == same_index),
            probability_same=float(probabilities[same_index]),
            probabilities={label: float(p) for label, p in zip(labels, probabilities)},
            **self.served_by())


class SiameseEndpoints:
    """The public endpoints in the all-models Bento (services/pipelines.py)."""

    @bentoml.api(route="/siamese/predict")
    def siamese_predict(self, image_a: UploadedFile, image_b: UploadedFile) -> SiamesePrediction:
        """Siamese: are the two images (multipart files `image_a`, `image_b`) of the same class?"""
        return self.handlers[TASK].predict(image_a, image_b)


@bentoml.service(name="siamese", traffic={"timeout": 60}, threads=configured_request_threads())
class SiameseService:
    model_ref = MODEL

    def __init__(self) -> None:
        self.handler = SiameseHandler.from_store(self.model_ref)

    @bentoml.api
    def predict(self, image_a: UploadedFile, image_b: UploadedFile) -> SiamesePrediction:
        """Compare two images (multipart files `image_a` and `image_b`)."""
        return self.handler.predict(image_a, image_b)

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, input/output specs and training metrics."""
        return self.handler.describe()


SERVED = ServedTask(TASK, MODEL, SiameseHandler, SiameseEndpoints, SiameseService)
