"""Image decoding and preprocessing with numpy and Pillow, reproducing fastai's validation tensors.

fastai opens images with `PILImage.create` (Pillow `convert("RGB")`), applies `Resize` (validation: a
centred crop to the target aspect ratio, then a Pillow resize), `ToTensor`, `IntToFloatTensor`
(divide by 255) and `Normalize`. The same Pillow calls in the same order give the same pixels.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.manifest import ImagePreprocessing

RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}
# Request size limits for image uploads (README's configuration table).
MAX_IMAGE_PIXELS = int(os.environ.get("PIPELINES_MAX_IMAGE_PIXELS", "40000000"))
MAX_UPLOAD_BYTES = int(float(os.environ.get("PIPELINES_MAX_UPLOAD_MB", "20")) * 1024 * 1024)


class InvalidImageError(ValueError):
    """An upload that is not a decodable image; the message names the field and the problem."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def decode_image(data: bytes, field: str, color_mode: str = "RGB") -> Image.Image:
    """Decode uploaded bytes fully (so truncation is caught here) and convert like fastai."""
    if not data:
        raise InvalidImageError(field, "the upload is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidImageError(
                    field, f"the image is {width}x{height}, more than {MAX_IMAGE_PIXELS:,} pixels"
                )
            image.load()
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(field, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImageError(field, f"the image could not be decoded ({error})") from None
    return image.convert(color_mode)


def center_crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int, int, int]:
    """fastai's validation `Resize(method=crop)`: the largest centred crop with the target's aspect."""
    ratio_w, ratio_h = width / target_width, height / target_height
    scale = ratio_w if ratio_w < ratio_h else ratio_h
    crop_w, crop_h = int(scale * target_width), int(scale * target_height)
    left, top = int(0.5 * (width - crop_w)), int(0.5 * (height - crop_h))
    return left, top, min(left + crop_w, width), min(top + crop_h, height)


def resize_like_fastai(image: Image.Image, spec: ImagePreprocessing) -> Image.Image:
    if spec.resize_method == "none":
        return image
    if spec.resize_method == "crop":
        image = image.crop(center_crop_box(*image.size, spec.width, spec.height))
    return image.resize((spec.width, spec.height), RESAMPLE[spec.resample])


def image_to_tensor(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """One decoded image to a normalised float32 CHW array, exactly as fastai's validation pipeline."""
    resized = resize_like_fastai(image.convert(spec.color_mode), spec)
    pixels = np.asarray(resized, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return (chw - mean) / std


def images_to_batch(images: list[Image.Image], spec: ImagePreprocessing) -> np.ndarray:
    return np.stack([image_to_tensor(image, spec) for image in images])
