"""Image classifier service: image files in, the k most probable classes of each out."""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from pydantic import Field

from services.images import image_to_tensor
from services.loading import ServedTask, TaskHandler, service_model, softmax
from services.runtime import configured_request_threads
from services.schemas import ClassifierResponse, ImageClassification, LabelProbability
from services.uploads import ImageFile, UploadedFile, read_upload

TASK = "classifier"
MODEL = service_model(TASK)
MAX_IMAGES = int(os.environ.get("CLASSIFIER_MAX_BATCH", "32"))
TopK = Annotated[int, Field(ge=1, description="how many classes to return per image (at most the model's classes)")]
Images = Annotated[list[UploadedFile], Field(min_length=1, max_length=MAX_IMAGES)]


class ClassifierHandler(TaskHandler):
    task = TASK

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed images (N, C, H, W) to class probabilities."""
        return softmax(self.model.run({self.manifest.input_names()[0]: images}))

    def classify(self, images: list[ImageFile], k: int, field: str) -> ClassifierResponse:
        if k < 1:  # the endpoints' schema says so too; checked before any image is decoded
            raise InvalidArgument(f"k: must be at least 1, got {k}")
        names = [field] if len(images) == 1 and field == "image" else [f"{field}[{i}]" for i in range(len(images))]
        batch = np.stack([image_to_tensor(read_upload(path, name, self.spec.color_mode), self.spec)
                          for path, name in zip(images, names)])
        labels = self.manifest.labels
        k = min(k, len(labels))
        predictions = []
        for row in self.infer(batch):
            order = np.argsort(-row, kind="stable")[:k]
            predictions.append(ImageClassification(
                label=labels[order[0]], top=[LabelProbability(label=labels[i], probability=float(row[i])) for i in order]))
        return ClassifierResponse(predictions=predictions, **self.served_by())


class ClassifierEndpoints:
    """The public endpoints in the all-models Bento (services/pipelines.py)."""

    @bentoml.api(route="/classifier/predict")
    def classifier_predict(self, image: UploadedFile, k: TopK = 5) -> ClassifierResponse:
        """Classifier: the k most probable classes of one image (multipart file `image`, form field `k`)."""
        return self.handlers[TASK].classify([image], k, "image")

    @bentoml.api(route="/classifier/predict_batch")
    def classifier_predict_batch(self, images: Images, k: TopK = 5) -> ClassifierResponse:
        """Classifier: the k most probable classes of each image (multipart files `images`)."""
        return self.handlers[TASK].classify(images, k, "images")


@bentoml.service(name="classifier", traffic={"timeout": 60}, threads=configured_request_threads())
class ClassifierService:
    model_ref = MODEL

    def __init__(self) -> None:
        self.handler = ClassifierHandler.from_store(self.model_ref)

    @bentoml.api
    def predict(self, image: UploadedFile, k: TopK = 5) -> ClassifierResponse:
        """The k most probable classes of one image (multipart file `image`, form field `k`)."""
        return self.handler.classify([image], k, "image")

    @bentoml.api
    def predict_batch(self, images: Images, k: TopK = 5) -> ClassifierResponse:
        """The k most probable classes of each image (multipart files `images`)."""
        return self.handler.classify(images, k, "images")

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, inputs, outputs, labels and training metrics."""
        return self.handler.describe()


SERVED = ServedTask(TASK, MODEL, ClassifierHandler, ClassifierEndpoints, ClassifierService)
