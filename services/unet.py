"""U-Net service: an image file in; the class mask (PNG), a per-class summary (JSON) or an overlay out.

The mask has the uploaded image's own size, one class index per pixel, as fastai's `predict` gives it.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
from PIL import Image
from pydantic import BaseModel

from services.images import image_to_tensor
from services.uploads import read_upload
from services.loading import ServedModel, check_provider_configuration, model_tag

TASK = "unet"
check_provider_configuration()


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


def palette(count: int) -> np.ndarray:
    """Distinct colours per class, background black."""
    rng = np.random.default_rng(7)
    colours = rng.integers(64, 256, size=(count, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


@bentoml.service(name="unet", traffic={"timeout": 120})
class UnetService:
    model_ref = bentoml.models.BentoModel(model_tag(TASK))

    def __init__(self) -> None:
        self.model = ServedModel.from_store(self.model_ref, TASK)
        self.spec = self.model.manifest.preprocessing
        self.colours = palette(len(self.model.manifest.labels))

    def class_mask(self, image: Image.Image) -> np.ndarray:
        """Class index per pixel at the image's own size."""
        logits = self.model.run({self.model.manifest.input_names()[0]: image_to_tensor(image, self.spec)[None]})
        mask = logits[0].argmax(axis=0).astype(np.uint8)
        if mask.shape != (image.height, image.width):  # the model saw a resized image: map the mask back
            mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.NEAREST))
        return mask

    @bentoml.api
    def segment(self, image: Path) -> Image.Image:
        """The class mask as a greyscale PNG of the upload's size: pixel value = class index."""
        return Image.fromarray(self.class_mask(read_upload(image, "image", self.spec.color_mode)), mode="L")

    @bentoml.api
    def summary(self, image: Path) -> SegmentationSummary:
        """Class names with their pixel counts and coverage, for clients that want numbers, not pixels."""
        mask = self.class_mask(read_upload(image, "image", self.spec.color_mode))
        counts = np.bincount(mask.ravel(), minlength=len(self.model.manifest.labels))
        classes = [ClassCoverage(index=i, name=name, pixels=int(counts[i]), coverage=float(counts[i] / mask.size))
                   for i, name in enumerate(self.model.manifest.labels) if counts[i]]
        return SegmentationSummary(width=mask.shape[1], height=mask.shape[0], classes=classes,
                                   model=self.model.tag, provider=self.model.provider)

    @bentoml.api
    def overlay(self, image: Path) -> Image.Image:
        """The upload with each class painted in its own colour (background left as is), for people."""
        picture = read_upload(image, "image", self.spec.color_mode).convert("RGB")
        mask = self.class_mask(picture)
        pixels = np.asarray(picture, dtype=np.float32)
        painted = np.where(mask[..., None] > 0, 0.45 * pixels + 0.55 * self.colours[mask], pixels)
        return Image.fromarray(painted.round().astype(np.uint8))

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, input/output specs, labels, metrics."""
        return self.model.info()
