"""One Bento for all four models: the public endpoints of siamese, unet, text and tabular under one port.

Three services with the same endpoints; the first two were measured against each other (README, results
log, "Serving all four models"):

- `Pipelines` (the default in bentofile.yaml): one service; every worker holds the four ONNX Runtime
  sessions and answers any endpoint in its own process.
- `ComposedPipelines`: an entry service that decodes, validates and preprocesses each request, then
  calls the task service's inference endpoint in that service's own process (`bentoml.depends`), so
  each task keeps its own workers and resources and can batch concurrent calls (PIPELINES_BATCHING).
- `PipelinesOnGPU` (bentofile.gpu.yaml): `Pipelines` asking its platform for one GPU.

Both pin the four registered models (`<TASK>_MODEL_TAG` or `<task>:latest`) at `bentoml build`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from PIL import Image
from pydantic import Field

from services.loading import TaskHandler
from services.siamese import SiameseHandler, SiamesePrediction, SiameseService
from services.tabular import MAX_RECORDS, Record, TabularHandler, TabularResponse, TabularService
from services.text import MAX_TEXTS, TextHandler, TextResponse, TextService
from services.unet import SegmentationSummary, UnetHandler, UnetService

TASKS = {
    "siamese": (SiameseService, SiameseHandler),
    "unet": (UnetService, UnetHandler),
    "text": (TextService, TextHandler),
    "tabular": (TabularService, TabularHandler),
}


class PipelinesEndpoints:
    """The public API: the same endpoints as the task services, under /<task>/. Requests are decoded,
    validated and preprocessed here; `self.handlers[task]` runs the model in this process or in the
    task service's."""

    handlers: dict[str, TaskHandler]

    @bentoml.api(route="/siamese/predict")
    def siamese_predict(self, image_a: Path, image_b: Path) -> SiamesePrediction:
        """Siamese: are the two images (multipart files `image_a`, `image_b`) of the same class?"""
        return self.handlers["siamese"].predict(image_a, image_b)

    @bentoml.api(route="/unet/segment")
    def unet_segment(self, image: Path) -> Image.Image:
        """U-Net: the class mask as a greyscale PNG of the upload's size (pixel value = class index)."""
        return self.handlers["unet"].segment(image)

    @bentoml.api(route="/unet/summary")
    def unet_summary(self, image: Path) -> SegmentationSummary:
        """U-Net: class names with their pixel counts and coverage."""
        return self.handlers["unet"].summary(image)

    @bentoml.api(route="/unet/overlay")
    def unet_overlay(self, image: Path) -> Image.Image:
        """U-Net: the upload with each class painted in its own colour."""
        return self.handlers["unet"].overlay(image)

    @bentoml.api(route="/text/classify")
    def text_classify(self, text: str) -> TextResponse:
        """Text: classify one text."""
        return self.handlers["text"].classify([text])

    @bentoml.api(route="/text/classify_batch")
    def text_classify_batch(
        self, texts: Annotated[list[str], Field(min_length=1, max_length=MAX_TEXTS)]
    ) -> TextResponse:
        """Text: classify several texts; each gets the answer it would get alone."""
        return self.handlers["text"].classify(texts)

    @bentoml.api(route="/tabular/predict")
    def tabular_predict(
        self, records: Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS)]
    ) -> TabularResponse:
        """Tabular: a prediction for each record (JSON objects keyed by column name)."""
        return self.handlers["tabular"].predict(records)

    @bentoml.api(route="/models")
    def models(self) -> dict:
        """Each task's model version, ONNX Runtime provider, inputs, outputs, labels and metrics."""
        return {task: handler.describe() for task, handler in self.handlers.items()}


@bentoml.service(name="pipelines", traffic={"timeout": 120})
class Pipelines(PipelinesEndpoints):
    siamese_model = SiameseService.inner.model_ref
    unet_model = UnetService.inner.model_ref
    text_model = TextService.inner.model_ref
    tabular_model = TabularService.inner.model_ref

    def __init__(self) -> None:
        self.handlers = {task: service.inner().handler for task, (service, _) in TASKS.items()}


@bentoml.service(name="pipelines-composed", traffic={"timeout": 120})
class ComposedPipelines(PipelinesEndpoints):
    siamese = bentoml.depends(SiameseService)
    unet = bentoml.depends(UnetService)
    text = bentoml.depends(TextService)
    tabular = bentoml.depends(TabularService)

    def __init__(self) -> None:
        self.handlers = {
            task: handler.remote(service.inner.model_ref.resolve(), getattr(self, task))
            for task, (service, handler) in TASKS.items()
        }


@bentoml.service(name="pipelines-gpu", traffic={"timeout": 120}, resources={"gpu": 1})
class PipelinesOnGPU(Pipelines.inner):
    """The one-process Bento asking its platform for one GPU (bentofile.gpu.yaml sets PIPELINES_PROVIDER=cuda)."""
