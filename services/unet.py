"""U-Net service: an image file in; the class mask (PNG), a per-class summary (JSON) or an overlay out.

The mask has the uploaded image's own size, one class index per pixel, as fastai's `predict` gives it,
mapped back through the resize the model's input went through: where fastai's `Resize` (method crop) cut
off part of an upload of another aspect ratio, those pixels are NOT_SEEN (255), not guessed.
"""

from __future__ import annotations

import bentoml
import numpy as np
from PIL import Image

from services.images import center_crop_box, image_to_tensor, resize_window
from services.manifest import ImagePreprocessing
from services.loading import ServedTask, TaskHandler, service_model
from services.runtime import configured_request_threads
from services.schemas import NOT_SEEN, ClassCoverage, SegmentationSummary
from services.uploads import ImageFile, UploadedFile, read_upload

TASK = "unet"
MODEL = service_model(TASK)
# zlib's fastest level for the PNGs BentoML encodes from the returned images (Pillow reads it from the image's
# encoderinfo): a mask encodes 3-6x faster than at Pillow's default 6 for 17-30% more bytes (960x720: 7 ms
# against 24 ms), an overlay up to 3x for up to 11% (benchmarks/png_encoding.py, README's results log).
FAST_PNG = {"compress_level": 1}


def mask_on_upload(mask: np.ndarray, width: int, height: int, spec: ImagePreprocessing) -> np.ndarray:
    """The model's (H, W) mask on an upload of `width` x `height`: resized back onto the window the service
    resized to the model's size (the whole upload for squish; a `pad` window's padding falls outside the upload
    and is dropped; what a `crop` window, or RandomResizedCrop's centre crop, left out is NOT_SEEN)."""
    if spec.center_crop is not None:  # RandomResizedCrop: the crop back in its place on the squished image
        left, top, crop_w, crop_h = center_crop_box(spec)
        squished = np.full((spec.height, spec.width), NOT_SEEN, dtype=np.uint8)
        squished[top:top + crop_h, left:left + crop_w] = np.asarray(Image.fromarray(mask).resize((crop_w, crop_h), Image.NEAREST))
        mask = squished
    if spec.resize_method in ("crop", "pad"):
        left, top, window_w, window_h = resize_window(width, height, spec.width, spec.height, spec.resize_method)
    else:
        left, top, window_w, window_h = 0, 0, width, height
    if mask.shape == (window_h, window_w) == (height, width):  # the model saw the upload as it is
        return mask
    window = np.asarray(Image.fromarray(mask).resize((window_w, window_h), Image.NEAREST))
    placed = np.full((height, width), NOT_SEEN, dtype=np.uint8)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + window_w, width), min(top + window_h, height)
    placed[y0:y1, x0:x1] = window[y0 - top:y1 - top, x0 - left:x1 - left]
    return placed


def palette(count: int) -> np.ndarray:
    """Distinct colours per class, background black."""
    rng = np.random.default_rng(7)
    colours = rng.integers(64, 256, size=(count, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


class UnetHandler(TaskHandler):
    task = TASK

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.colours = palette(len(self.manifest.labels))

    def infer(self, image: np.ndarray) -> np.ndarray:
        """One preprocessed image (1, C, H, W) to its class mask (H, W)."""
        logits = self.model.run({self.manifest.input_names()[0]: image})
        return logits[0].argmax(axis=0).astype(np.uint8)

    def read(self, image: ImageFile) -> Image.Image:
        return read_upload(image, "image", self.spec.color_mode)

    def mask_of(self, image: Image.Image) -> np.ndarray:
        """Class index per pixel at the image's own size."""
        return mask_on_upload(self.infer(image_to_tensor(image, self.spec)[None]), image.width, image.height, self.spec)

    def segment(self, image: ImageFile) -> Image.Image:
        return png_response(Image.fromarray(self.mask_of(self.read(image)), mode="L"))

    def summary(self, image: ImageFile) -> SegmentationSummary:
        mask = self.mask_of(self.read(image))
        counts = np.bincount(mask.ravel(), minlength=len(self.manifest.labels))
        classes = [ClassCoverage(index=i, name=name, pixels=int(counts[i]), coverage=float(counts[i] / mask.size))
                   for i, name in enumerate(self.manifest.labels) if counts[i]]
        return SegmentationSummary(width=mask.shape[1], height=mask.shape[0], classes=classes,
                                   not_seen_pixels=int(np.count_nonzero(mask == NOT_SEEN)), **self.served_by())

    def overlay(self, image: ImageFile) -> Image.Image:
        picture = self.read(image).convert("RGB")
        mask = self.mask_of(picture)
        pixels = np.asarray(picture, dtype=np.float32)
        seen = (mask > 0) & (mask != NOT_SEEN)
        painted = np.where(seen[..., None], 0.45 * pixels + 0.55 * self.colours[np.where(seen, mask, 0)], pixels)
        return png_response(Image.fromarray(painted.round().astype(np.uint8)))


def png_response(image: Image.Image) -> Image.Image:
    """The image, to be encoded as PNG at zlib's fastest level when BentoML saves it for the response."""
    image.encoderinfo = dict(FAST_PNG)
    return image


class UnetEndpoints:
    """The public endpoints in the all-models Bento (services/pipelines.py)."""

    @bentoml.api(route="/unet/segment")
    def unet_segment(self, image: UploadedFile) -> Image.Image:
        """U-Net: the class mask as a greyscale PNG of the upload's size (pixel value = class index)."""
        return self.handlers[TASK].segment(image)

    @bentoml.api(route="/unet/summary")
    def unet_summary(self, image: UploadedFile) -> SegmentationSummary:
        """U-Net: class names with their pixel counts and coverage."""
        return self.handlers[TASK].summary(image)

    @bentoml.api(route="/unet/overlay")
    def unet_overlay(self, image: UploadedFile) -> Image.Image:
        """U-Net: the upload with each class painted in its own colour."""
        return self.handlers[TASK].overlay(image)


@bentoml.service(name="unet", traffic={"timeout": 120}, threads=configured_request_threads())
class UnetService:
    model_ref = MODEL

    def __init__(self) -> None:
        self.handler = UnetHandler.from_store(self.model_ref)

    @bentoml.api
    def segment(self, image: UploadedFile) -> Image.Image:
        """The class mask as a greyscale PNG of the upload's size: pixel value = class index."""
        return self.handler.segment(image)

    @bentoml.api
    def summary(self, image: UploadedFile) -> SegmentationSummary:
        """Class names with their pixel counts and coverage, for clients that want numbers, not pixels."""
        return self.handler.summary(image)

    @bentoml.api
    def overlay(self, image: UploadedFile) -> Image.Image:
        """The upload with each class painted in its own colour (background left as is), for people."""
        return self.handler.overlay(image)

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, input/output specs, labels, metrics."""
        return self.handler.describe()


SERVED = ServedTask(TASK, MODEL, UnetHandler, UnetEndpoints, UnetService)
