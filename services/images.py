"""Image decoding and preprocessing with numpy and Pillow, reproducing fastai's validation tensors.

fastai opens images with `PILImage.create` (Pillow `convert("RGB")`), applies `Resize` (validation: a
centred crop to the target aspect ratio, then a Pillow resize), `ToTensor`, `IntToFloatTensor`
(divide by 255) and `Normalize`. The same Pillow calls in the same order give the same pixels.
"""

from __future__ import annotations

import functools
import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.manifest import BatchResize, ImagePreprocessing

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


def resize_window(width: int, height: int, target_width: int, target_height: int, method: str) -> tuple[int, int, int, int]:
    """fastai's validation `Resize` window (left, top, width, height) with the target's aspect, centred:
    `crop` the largest inside the image, `pad` the smallest holding it (left/top negative: padding)."""
    ratio_w, ratio_h = width / target_width, height / target_height
    scale = min(ratio_w, ratio_h) if method == "crop" else max(ratio_w, ratio_h)
    window_w, window_h = int(scale * target_width), int(scale * target_height)
    return int(0.5 * (width - window_w)), int(0.5 * (height - window_h)), window_w, window_h


PAD_MODES = {"zeros": "constant", "border": "edge", "reflection": "reflect"}


def crop_pad(image: Image.Image, left: int, top: int, window_w: int, window_h: int, pad_mode: str) -> Image.Image:
    """The window of `image`, padded where it reaches beyond the image, as fastai's `crop_pad` on a PIL image."""
    width, height = image.size
    image = image.crop((max(left, 0), max(top, 0), min(left + window_w, width), min(top + window_h, height)))
    before = (max(-top, 0), max(-left, 0))
    after = (max(top + window_h - height, 0), max(left + window_w - width, 0))
    if not any(before + after):
        return image
    pixels = np.asarray(image)
    padding = [(before[0], after[0]), (before[1], after[1])] + [(0, 0)] * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, padding, mode=PAD_MODES[pad_mode]))


def resize_like_fastai(image: Image.Image, spec: ImagePreprocessing) -> Image.Image:
    if spec.resize_method == "none":
        return image
    if spec.resize_method in ("crop", "pad"):
        image = crop_pad(image, *resize_window(*image.size, spec.width, spec.height, spec.resize_method), spec.pad_mode)
    return image.resize((spec.width, spec.height), RESAMPLE[spec.resample])


def area_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): PyTorch's adaptive average pooling along one axis (F.interpolate mode 'area')."""
    matrix = np.zeros((out, size))
    for index in range(out):
        start, end = index * size // out, -(-(index + 1) * size // out)
        matrix[index, start:end] = 1.0 / (end - start)
    return matrix


def grid_sample_matrix(size: int, grid: tuple[float, ...], align_corners: bool, pad_mode: str) -> np.ndarray:
    """(len(grid), size): PyTorch's bilinear `grid_sample` along one axis at normalised coordinates `grid`,
    the source positions computed in float32 as its CPU kernel does."""
    coordinates = np.asarray(grid, dtype=np.float32)
    one = np.float32(1)
    if align_corners:
        source = (coordinates + one) * np.float32((size - 1) / 2)
        low, high = 0.0, float(size - 1)
    else:
        source = (coordinates + one) * np.float32(size / 2) - np.float32(0.5)
        low, high = -0.5, size - 0.5
    if pad_mode == "reflection" and high > low:
        span = 2 * (high - low)
        folded = np.mod(np.abs(source.astype(np.float64) - low), span)
        source = (np.where(folded > span / 2, span - folded, folded) + low).astype(np.float32)
    if pad_mode != "zeros":
        source = np.clip(source, np.float32(0), np.float32(size - 1))
    first = np.floor(source)
    matrix = np.zeros((len(grid), size))
    for row, (position, position_weight, next_weight) in enumerate(zip(first.astype(np.int64), (first + one) - source,
                                                                       source - first)):
        for column, weight in ((position, position_weight), (position + 1, next_weight)):
            if 0 <= column < size:  # outside the image: zeros padding
                matrix[row, column] += weight
    return matrix


@functools.lru_cache(maxsize=16)
def batch_resize_matrices(spec: BatchResize, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (out height, height), columns (out width, width)), float32: every step is separable (a crop,
    an area shrink and a grid sample on an identity grid act on rows and columns apart), so the whole
    resampling is one matrix per axis, composed in float64."""
    rows, columns = np.eye(height), np.eye(width)
    for step in spec.steps:
        if step.crop is not None:
            top, left, crop_height, crop_width = step.crop
            rows, columns = rows[top:top + crop_height], columns[left:left + crop_width]
        if step.area_size is not None:
            rows = area_matrix(rows.shape[0], step.area_size[0]) @ rows
            columns = area_matrix(columns.shape[0], step.area_size[1]) @ columns
        rows = grid_sample_matrix(rows.shape[0], step.grid_y, step.align_corners, step.pad_mode) @ rows
        columns = grid_sample_matrix(columns.shape[0], step.grid_x, step.align_corners, step.pad_mode) @ columns
    return rows.astype(np.float32), np.ascontiguousarray(columns.T, dtype=np.float32)


def batch_resize(chw: np.ndarray, spec: BatchResize) -> np.ndarray:
    """fastai's validation-time batch resampling (`BatchResize`) of one float CHW image."""
    rows, columns = batch_resize_matrices(spec, chw.shape[1], chw.shape[2])
    return rows @ chw @ columns


def image_to_tensor(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """One decoded image to a normalised float32 CHW array, exactly as fastai's validation pipeline."""
    resized = resize_like_fastai(image.convert(spec.color_mode), spec)
    pixels = np.asarray(resized, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(spec.scale)
    if spec.batch_resize is not None:
        chw = batch_resize(chw, spec.batch_resize)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return (chw - mean) / std


def images_to_batch(images: list[Image.Image], spec: ImagePreprocessing) -> np.ndarray:
    return np.stack([image_to_tensor(image, spec) for image in images])
