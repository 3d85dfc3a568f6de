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


def resize_window(width: int, height: int, target_width: int, target_height: int,
                  method: str) -> tuple[int, int, int, int]:
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


def center_crop_box(spec: ImagePreprocessing) -> tuple[int, int, int, int]:
    """(left, top, width, height) of `spec.center_crop` in the image resized to `spec.width` x `spec.height`,
    centred as fastai's `crop_pad` centres it."""
    height, width = spec.center_crop
    return (spec.width - width) // 2, (spec.height - height) // 2, width, height


def resize_like_fastai(image: Image.Image, spec: ImagePreprocessing) -> Image.Image:
    if spec.resize_method == "none":
        return image
    if spec.resize_method in ("crop", "pad"):
        image = crop_pad(image, *resize_window(*image.size, spec.width, spec.height, spec.resize_method), spec.pad_mode)
    image = image.resize((spec.width, spec.height), RESAMPLE[spec.resample])
    if spec.center_crop is not None:
        left, top, width, height = center_crop_box(spec)
        image = image.crop((left, top, left + width, top + height))
    return image


def area_shrink(image: np.ndarray, out: int, axis: int) -> np.ndarray:
    """PyTorch's adaptive average pooling (F.interpolate mode 'area') along one axis, by cumulative sums."""
    size = image.shape[axis]
    starts, ends = np.arange(out) * size // out, -(-(np.arange(out) + 1) * size // out)
    sums = np.cumsum(image, axis=axis, dtype=np.float64)
    sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
    counts = (ends - starts).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    return (np.take(sums, ends, axis=axis) - np.take(sums, starts, axis=axis)) / counts


def identity_grid(size: int, align_corners: bool) -> np.ndarray:
    """The normalised coordinates of `F.affine_grid` for the identity along one axis: PyTorch's float32
    `linspace(-1, 1, size)` (each value start + step * i from the nearer end, fused multiply-add as its
    CPU kernel computes it), times (size - 1) / size without align_corners."""
    if size <= 1:
        return np.zeros(size, dtype=np.float32)
    step = np.float32(2) / np.float32(size - 1)
    index = np.arange(size, dtype=np.float64)
    grid = np.where(index < size // 2, -1.0 + np.float64(step) * index,
                    1.0 - np.float64(step) * (size - 1 - index)).astype(np.float32)
    if not align_corners:
        grid = (grid * np.float32(size - 1)) / np.float32(size)
    return grid


@functools.lru_cache(maxsize=64)
def grid_sample_taps(size: int, out: int, align_corners: bool, pad_mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """PyTorch's bilinear `grid_sample` along one axis on the identity grid of `out` points: for each output,
    two source indices and their weights, the source positions computed in float32 as its CPU kernel does."""
    one = np.float32(1)
    grid = identity_grid(out, align_corners)
    if align_corners:
        source = (grid + one) * np.float32((size - 1) / 2)
        low, high = 0.0, float(size - 1)
    else:
        source = (grid + one) * np.float32(size / 2) - np.float32(0.5)
        low, high = -0.5, size - 0.5
    if pad_mode == "reflection" and high > low:
        span = 2 * (high - low)
        folded = np.mod(np.abs(source.astype(np.float64) - low), span)
        source = (np.where(folded > span / 2, span - folded, folded) + low).astype(np.float32)
    if pad_mode != "zeros":
        source = np.clip(source, np.float32(0), np.float32(size - 1))
    first = np.floor(source)
    position = first.astype(np.int64)
    taps = []
    for index, weight in ((position, (first + one) - source), (position + 1, source - first)):
        weight[(index < 0) | (index >= size)] = 0  # outside the image: zeros padding
        taps.append((np.clip(index, 0, size - 1), weight))
    return taps


def area_shrink_size(height: int, width: int, out_height: int, out_width: int,
                     align_corners: bool) -> tuple[int, int] | None:
    """fastai's `_grid_sample` shrinks by area first where bilinear sampling would skip pixels; its test, as
    written, compares the input height with the output width and the input width with 2."""
    d = min(height / out_width, width / 2) / 2
    if d <= 1:  # decided before z, which divides by zero for a 1x1 output (fastai's own would raise)
        return None
    grids = [identity_grid(n, align_corners) for n in (out_height, out_width)]
    span = float(np.float32(max(g.max() for g in grids) - min(g.min() for g in grids)))
    if span == 0 or d <= 1 / span * 2:
        return None
    return int(height * (1 / d)), int(width * (1 / d))


def resample_plan(spec: BatchResize, height: int, width: int) -> tuple[list, list]:
    """The operations `spec` does along the rows and along the columns of a height x width image: each step
    is separable (a crop, an area shrink and a grid sample on an identity grid act on each axis apart)."""
    rows, columns = [], []
    for step in spec.steps:
        if step.crop is not None:
            top, left, height, width = step.crop
            rows.append(("crop", top, height))
            columns.append(("crop", left, width))
        out_height, out_width = step.size or (height, width)
        shrunk = area_shrink_size(height, width, out_height, out_width, step.align_corners)
        if shrunk is not None:
            rows.append(("area", shrunk[0]))
            columns.append(("area", shrunk[1]))
        rows.append(("grid", out_height, step.align_corners, step.pad_mode))
        columns.append(("grid", out_width, step.align_corners, step.pad_mode))
        height, width = out_height, out_width
    return rows, columns


def apply_plan(array: np.ndarray, plan: list, axis: int) -> np.ndarray:
    for operation, *arguments in plan:
        if operation == "crop":
            start, length = arguments
            array = np.take(array, np.arange(start, start + length), axis=axis)
        elif operation == "area":
            array = area_shrink(array, arguments[0], axis)
        else:
            out, align_corners, pad_mode = arguments
            taps = grid_sample_taps(array.shape[axis], out, align_corners, pad_mode)
            (first, first_weight), (second, second_weight) = taps
            shape = [-1 if a == axis else 1 for a in range(array.ndim)]
            array = (np.take(array, first, axis=axis) * first_weight.reshape(shape)
                     + np.take(array, second, axis=axis) * second_weight.reshape(shape))
    return array


# Up to this many pixels the resampling runs as one cached matrix per axis (fast for a fixed item size);
# above, axis by axis with two taps per output (images of any size, e.g. a U-Net without Resize).
DENSE_RESAMPLING_PIXELS = 512 * 512


@functools.lru_cache(maxsize=16)
def batch_resize_matrices(spec: BatchResize, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (out height, height), columns.T (width, out width)), float32, composed in float64."""
    rows, columns = resample_plan(spec, height, width)
    return (apply_plan(np.eye(height), rows, 0).astype(np.float32),
            np.ascontiguousarray(apply_plan(np.eye(width), columns, 0).T, dtype=np.float32))


def batch_resize(chw: np.ndarray, spec: BatchResize) -> np.ndarray:
    """fastai's validation-time batch resampling (`BatchResize`) of one float CHW image."""
    height, width = chw.shape[1:]
    if height * width <= DENSE_RESAMPLING_PIXELS:
        rows, columns = batch_resize_matrices(spec, height, width)
        return rows @ chw @ columns
    rows, columns = resample_plan(spec, height, width)
    return apply_plan(apply_plan(chw, rows, 1), columns, 2).astype(np.float32)


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
