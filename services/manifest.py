"""The manifest: the contract between export/ (which writes it) and services/ (which reads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
PARITY_FILE = "parity.json"
REPORT_FILE = "report.md"
SCHEMA_VERSION = 1


def file_sha256(path: Path) -> str:
    """The checksum parity.json records for a verified ONNX file, and the services check at start-up."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ManifestVersionError(ValueError):
    """A manifest written by another release, with another schema version."""


class TensorSpec(BaseModel):
    """One ONNX input or output; symbolic dimensions are named strings ("batch", "height")."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: Literal["float32", "float64", "int64", "int32", "bool"]
    shape: list[int | str]


class ResampleStep(BaseModel):
    """One fastai batch transform's resampling at validation, on the float image: an optional crop
    ([top, left, height, width]), then `F.grid_sample` (bilinear) on the identity grid at `size`
    ([height, width]; None: the image's own), after fastai's area pre-shrink where it shrinks much."""

    model_config = ConfigDict(frozen=True)

    crop: Optional[tuple[int, int, int, int]] = None
    size: Optional[tuple[int, int]] = None
    align_corners: bool
    pad_mode: Literal["zeros", "border", "reflection"] = "reflection"


class BatchResize(BaseModel):
    """fastai's batch-level resampling at validation, on the item-sized image: each `aug_transforms` or
    `RandomResizedCropGPU` transform resamples once, in order, even one that keeps the size (its float
    rounding moves pixel values by up to 2e-5 at 224x224); with a size it resizes (the book's presizing:
    `item_tfms=Resize(460)`, `batch_tfms=aug_transforms(size=224)`)."""

    model_config = ConfigDict(frozen=True)

    steps: tuple[ResampleStep, ...]
    resizes: bool = True  # False: every step keeps the size (aug_transforms() without size: rounding only)


class ImagePreprocessing(BaseModel):
    """Everything needed to turn an uploaded image into the tensor fastai fed the model at validation.

    fastai's validation-time `Resize(method="crop")` takes the largest centred crop with the target's
    aspect ratio, then resizes it with `resample` (`"pad"`: the smallest centred window with that aspect,
    the image padded by `pad_mode`); `batch_resize`, where fastai resized batches too, takes it from there;
    `Normalize` subtracts `mean` and divides by `std` after scaling to [0, 1] (0 and 1 where the
    DataLoaders had no Normalize). `center_crop` (height, width), after the resize: fastai's validation-time
    `RandomResizedCrop` squishes the image to its size plus a margin (`val_xtra`), then crops the centre.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["image"] = "image"
    color_mode: Literal["RGB", "L"] = "RGB"
    # None with resize_method "none": the model takes the image at its own size (fastai had no Resize).
    height: Optional[int] = Field(default=None, gt=0)
    width: Optional[int] = Field(default=None, gt=0)
    resize_method: Literal["crop", "squish", "pad", "none"] = "crop"
    pad_mode: Literal["zeros", "border", "reflection"] = "reflection"
    resample: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    center_crop: Optional[tuple[int, int]] = None
    batch_resize: Optional[BatchResize] = None
    scale: float = 255.0
    mean: list[float]
    std: list[float]

    @property
    def model_size(self) -> tuple[Optional[int], Optional[int]]:
        """(height, width) of the tensor the model takes (None: any)."""
        sizes = [step.size for step in self.batch_resize.steps if step.size] if self.batch_resize else []
        if sizes:
            return sizes[-1]
        return self.center_crop or (self.height, self.width)


class TabularPreprocessing(BaseModel):
    """fastai's fitted FillMissing, Categorify and Normalize, replayed in that order when serving.

    `x_cat_columns` is `cat_names` followed by one `<col>_na` indicator per column in `fill_values`
    (classes `#na#`, False, True). Category codes index `categories[col]`; code 0 (`#na#`) stands for
    missing and unseen values. Normalisation runs in float64 on fastai's statistics exactly as stored
    (float32 values for float columns, float64 for integer ones), then casts to float32, which is what
    fastai's pandas arithmetic does.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["tabular"] = "tabular"
    cat_names: list[str]
    cont_names: list[str]
    x_cat_columns: list[str]
    categories: dict[str, list[str | bool | int | float]]
    fill_values: dict[str, float]
    means: dict[str, float]
    stds: dict[str, float]
    target: str
    target_type: Literal["classification", "regression"]


class TextPreprocessing(BaseModel):
    """fastai's tokenisation as `learn.predict` runs it: `rules` in order, spaCy's blank `language`
    tokenizer with fastai's special tokens, then `vocab` (unknown tokens -> `xxunk`). Batches are padded
    on the right with `pad_index`; the model also takes each row's length."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["text"] = "text"
    language: str = "en"
    rules: list[str]
    vocab: list[str]
    pad_index: int
    bptt: int
    max_len: int | None  # None: every token's output is pooled (fastai's max_len=None)


Preprocessing = Annotated[ImagePreprocessing | TabularPreprocessing | TextPreprocessing, Field(discriminator="kind")]


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    task: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] = []
    preprocessing: Preprocessing
    provenance: dict[str, Any] = {}
    metrics: dict[str, Any] = {}

    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST_FILE
        data = json.loads(path.read_text())
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ManifestVersionError(
                f"{path} has manifest schema version {version}, this release reads version {SCHEMA_VERSION}: "
                + ("export the model again with this release (`pipelines export`)" if (version or 0) < SCHEMA_VERSION
                   else "upgrade fastai-onnx-pipelines to serve it")
            )
        return cls.model_validate(data)
