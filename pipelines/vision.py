"""Shared pieces of the image tasks: architectures and ImageNet weights when they can be had."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click

from pipelines.data import (
    IMAGE_EXTENSIONS, describe_problems, digits_image_folder, download_book_dataset, image_files, image_problems,
    read_table, readable_training_images,
)
from pipelines.errors import PipelineError
from pipelines.tasks.base import PreprocessingProbe, TaskOptions, option

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
BOOK_LABEL_PATTERN = r"^(.*)_\d+.jpg$"


def regex_label_func(pattern: str):
    compiled = re.compile(pattern)

    def label_func(fname: Path) -> str:
        match = compiled.match(Path(fname).name)
        if match is None:
            suffix = re.escape(Path(fname).suffix)
            raise PipelineError(f"file name {Path(fname).name!r} does not match the label pattern '{pattern}' (its "
                                f"first group is the class): pass --label-pattern for your names, e.g. "
                                f"'^(.*)_\\d+{suffix}$', or --label-from folder for a class per folder")
        return match.groups()[0]

    return label_func


def parent_label_func(fname: Path) -> str:
    return Path(fname).parent.name


@dataclass
class ImageFolderOptions(TaskOptions):
    """Where images come from and how their class is read: shared by the image-classification tasks."""

    data: str = option("digits", "'digits' (embedded, offline), 'pets' (Oxford-IIIT Pets via fastai's untar_data), "
                                 "or a folder of images.")
    label_from: str = option("auto", "Where a user folder's class comes from: the file name (--label-pattern), the "
                                      "parent folder, or 'auto': the file name where every name matches the "
                                      "pattern, else the parent folder where images sit in class folders.",
                             choices=("auto", "filename", "folder"))
    label_pattern: str = option(BOOK_LABEL_PATTERN, "Regex whose first group is the class, matched against the file name.")
    image_size: int | None = option(None, "Square training size in pixels [default: 32 for digits, 224 otherwise].",
                                    type=click.IntRange(16, 1024))
    arch: str = option("resnet34", "Encoder architecture (torchvision ResNet).", choices=ARCHITECTURES)
    pretrained: str = option("auto", "ImageNet weights: 'auto' uses them when cached or downloadable, else trains "
                                     "from scratch.", choices=("auto", "yes", "no"))


def resolve_image_files(options: ImageFolderOptions) -> tuple[list[Path], callable, str]:
    """The image files of `--data`, the function that reads a file's class, and the data's description."""
    data = options.data
    if data == "digits":
        folder = digits_image_folder()
        return image_files(folder), regex_label_func(BOOK_LABEL_PATTERN), "digits (scikit-learn load_digits, embedded)"
    if data == "pets":
        from fastai.data.external import URLs

        path = download_book_dataset(URLs.PETS, "Oxford-IIIT Pets", "--data digits or --data FOLDER")
        files = readable_training_images(image_files(path / "images"), str(path / "images"))
        return files, regex_label_func(BOOK_LABEL_PATTERN), f"Oxford-IIIT Pets ({path})"
    folder = Path(data).expanduser()
    if not folder.exists():
        raise PipelineError(f"--data {data}: no such folder (expected 'digits', 'pets' or a folder of images)")
    if not folder.is_dir():
        raise PipelineError(f"--data {data}: not a folder")
    files = image_files(folder)
    if not files:
        raise PipelineError(f"--data {data}: no image files found (looked for .jpg, .jpeg, .png and others)")
    files = readable_training_images(files, f"--data {data}")
    label_from = options.label_from
    if label_from == "auto":
        pattern = re.compile(options.label_pattern)
        in_class_folders = all(f.parent != folder for f in files) and len({f.parent.name for f in files}) >= 2
        label_from = "folder" if in_class_folders and not all(pattern.match(f.name) for f in files) else "filename"
        if label_from == "folder":
            click.echo(f"      class = parent folder: the images sit in {len({f.parent.name for f in files})} folders "
                       "and their names do not all match --label-pattern (--label-from says otherwise)")
    if label_from == "folder":
        return files, parent_label_func, f"folder {folder} (class = parent folder)"
    return files, regex_label_func(options.label_pattern), f"folder {folder} (class from file name)"


TRAINING_FOLDERS, VALIDATION_FOLDERS = {"train", "training"}, {"valid", "val", "validation"}


def training_split(options: ImageFolderOptions, files: list[Path], labels: list[str]):
    """The images and labels to train on and their split, (training indices, validation indices): where the
    --data folder holds train/ and valid/ (or val/) folders, ImageNet's and fastai's own layouts, those
    (fastai's GrandparentSplitter; images elsewhere, test/ say, are left out with a line); else fastai's
    RandomSplitter, 20% with --seed. Validation images of a class no training image has are left out with a
    line (fastai takes the classes from the training images and fails on the others)."""
    import numpy as np
    import pandas as pd
    from fastai.data.transforms import RandomSplitter

    from pipelines.tasks.tabular import classes_seen_in_training

    folder = Path(options.data).expanduser()
    parts = [Path(f).relative_to(folder).parts[0].lower() if folder.is_dir() and Path(f).is_relative_to(folder) else ""
             for f in files]
    laid_out = any(p in TRAINING_FOLDERS for p in parts) and any(p in VALIDATION_FOLDERS for p in parts)
    if laid_out:
        kept = [i for i, part in enumerate(parts) if part in TRAINING_FOLDERS | VALIDATION_FOLDERS]
        if len(kept) < len(files):
            others = sorted({parts[i] for i in range(len(files)) if i not in set(kept)})
            click.echo(f"      left out {len(files) - len(kept)} image(s) outside the train and valid folders "
                       f"({', '.join(f'{name}/' for name in others[:3])})")
        files, labels = [files[i] for i in kept], [labels[i] for i in kept]
        is_valid = np.array([parts[i] in VALIDATION_FOLDERS for i in kept])
        click.echo(f"      split: the train and valid folders ({int((~is_valid).sum())} and {int(is_valid.sum())} images)")
    else:
        random_split = RandomSplitter(0.2, seed=options.seed)(files)
        is_valid = np.isin(np.arange(len(files)), random_split[1])
        if is_valid.all() or not is_valid.any():
            raise PipelineError(f"--data {options.data}: {len(files)} image(s) are too few to split into training "
                                "and validation")
    keep = classes_seen_in_training(pd.Series(labels), is_valid, items="image")
    if keep.all() and not laid_out:
        return files, labels, random_split  # fastai's own order
    files, labels, is_valid = [f for f, k in zip(files, keep) if k], [v for v, k in zip(labels, keep) if k], is_valid[keep]
    return files, labels, (np.flatnonzero(~is_valid).tolist(), np.flatnonzero(is_valid).tolist())


def imagenet_weights(arch: str, choice: str):
    """torchvision's ImageNet weights enum for `arch` when usable (cached or downloadable), else None.

    `choice` is the CLI's --pretrained: 'no' never looks, 'yes' fails without them, 'auto' says in one
    line that it trains from scratch.
    """
    import torchvision.models as tvm

    if choice == "no":
        return None, "pretrained weights not requested"
    weights = tvm.get_model_weights(arch).IMAGENET1K_V1
    try:
        weights.get_state_dict(progress=False)  # torch's hub cache first, then a download
        return weights, f"ImageNet weights {weights}"
    except Exception as error:
        if choice == "yes":
            raise PipelineError(
                f"--pretrained yes, but the ImageNet weights for {arch} could not be loaded "
                f"({type(error).__name__}: {error}); use --pretrained auto or no offline"
            ) from None
        note = f"ImageNet weights for {arch} unavailable ({type(error).__name__}), training from scratch"
        click.echo(f"note: {note}")
        return None, note


def torchvision_arch(arch: str):
    import torchvision.models as tvm

    return getattr(tvm, arch)


def color_mode_of(model) -> str:
    """'L' for a model whose first convolution takes one channel (`vision_learner(..., n_in=1)` over
    `ImageBlock(cls=PILImageBW)`), 'RGB' for three."""
    from torch import nn

    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    if channels not in (1, 3):
        raise PipelineError(f"the model takes {channels}-channel images; the service decodes RGB (3) or grey (1) "
                            "images only")
    return "L" if channels == 1 else "RGB"


def input_and_target_pipelines(learn):
    """The Datasets' two pipelines, input's and target's, of a Learner built on `Datasets` (DataBlock,
    ImageDataLoaders...), or None (a `TfmdLists` of tuples, as the book's Siamese data, has one)."""
    from fastcore.foundation import L

    pipelines = getattr(learn.dls.train_ds, "tfms", None)
    if not isinstance(pipelines, (list, tuple, L)) or len(pipelines) != 2:
        return None
    return pipelines


def image_in_target_out(learn) -> bool:
    """Whether the Learner's data is one image in and one target out that is not an image (a class,
    several labels or a number), as `ImageDataLoaders` or `DataBlock(blocks=(ImageBlock, CategoryBlock))`
    make it: a classifier's data, whatever model the user gave `Learner(dls, model)`."""
    pipelines = input_and_target_pipelines(learn)
    if pipelines is None:
        return False
    image, target = ([getattr(f, "name", "") for f in pipeline.fs] for pipeline in pipelines)
    return "PILBase.create" in image and not any(name.endswith(".create") for name in target)  # PILMask.create too


def created_image_types(pipeline) -> list[type]:
    """The fastai image types (PILImage, PILImageBW, PILMask) a Datasets pipeline's `create` steps make. Their
    Transforms share the name "PILBase.create"; the bound class tells them apart."""
    owners = (getattr(getattr(getattr(f, "encodes", None), "_f", None), "__self__", None) for f in pipeline.fs)
    return [owner for owner in owners if isinstance(owner, type)]


def image_preprocessing(dls, batch_resizing: bool = False, color_mode: str = "RGB"):
    """The serving-side preprocessing of a vision DataLoaders: its validation Resize (if any), batch-level
    resampling (one that changes the size only with `batch_resizing`: the book's presizing) and Normalize."""
    from fastai.vision.all import Normalize, RandomResizedCrop, Resize

    from services.manifest import ImagePreprocessing

    resizing_items = [t for t in dls.valid.after_item.fs if isinstance(t, (Resize, RandomResizedCrop))]
    if len(resizing_items) > 1:
        raise PipelineError(f"the learner's DataLoaders resize items twice ({', '.join(type(t).__name__ for t in resizing_items)}); "
                            "the serving preprocessing reproduces one Resize or RandomResizedCrop")
    resize = resizing_items[0] if resizing_items else None
    resample = resample_name(resize) if resize is not None else "bilinear"
    center_crop = None
    if isinstance(resize, RandomResizedCrop):
        resize, center_crop = validation_random_resized_crop(resize)
    item_size = center_crop or (tuple(int(v) for v in reversed(resize.size)) if resize is not None else None)
    batch_resize = validation_batch_resize(dls, item_size)
    if batch_resize is not None and batch_resize.resizes and not batch_resizing:
        resizing = [type(t).__name__ for t in dls.valid.after_batch.fs if getattr(t, "size", None) is not None]
        raise PipelineError(
            f"the learner's DataLoaders resize images batch by batch ({', '.join(resizing)}, e.g. from "
            "aug_transforms(size=...)); the serving preprocessing reproduces that for classifiers and U-Nets "
            "only. Train with item_tfms=Resize(size) and aug_transforms() without size, or export a learner "
            "whose validation transforms are item-level"
        )
    normalize = next((t for t in dls.valid.after_batch.fs if isinstance(t, Normalize)), None)
    # vision_learner adds Normalize for pretrained weights only; without it the model saw pixels / 255
    stats = (dict(mean=[float(v) for v in normalize.mean.flatten()], std=[float(v) for v in normalize.std.flatten()])
             if normalize is not None else dict(mean=[0.0] * len(color_mode), std=[1.0] * len(color_mode)))
    if resize is None:
        return ImagePreprocessing(color_mode=color_mode, resize_method="none", batch_resize=batch_resize, **stats)
    width, height = resize.size  # fastai stores (width, height)
    return ImagePreprocessing(color_mode=color_mode, height=int(height), width=int(width),
                              resize_method=resize.method if resize.method in ("crop", "pad") else "squish",
                              pad_mode=resize.pad_mode, resample=resample, center_crop=center_crop,
                              batch_resize=batch_resize, **stats)


def resample_name(transform) -> str:
    """The Pillow filter a `Resize` or `RandomResizedCrop` resizes images with (its `resamples[0]`)."""
    from PIL import Image

    names = {Image.BILINEAR: "bilinear", Image.NEAREST: "nearest", Image.BICUBIC: "bicubic"}
    if transform.mode not in names:
        raise PipelineError(f"the learner's {type(transform).__name__} resamples with Pillow filter {transform.mode!r}; "
                            "the serving preprocessing reproduces bilinear, nearest and bicubic")
    return names[transform.mode]


def validation_random_resized_crop(transform):
    """fastai's `RandomResizedCrop` (the book's chapter 2: `item_tfms=RandomResizedCrop(224, min_scale=0.5)`)
    at validation: the whole image squished to its size plus `val_xtra` of it (rounded up to 8 pixels), then
    the centre cropped to its size. As (the squish as a `Resize`, the crop's (height, width))."""
    import math

    from fastai.vision.all import Resize

    width, height = (int(v) for v in transform.size)  # fastai stores (width, height)
    margin = math.ceil(max(width, height) * transform.val_xtra / 8) * 8
    return Resize((height + margin, width + margin), method="squish"), (height, width)


def validation_batch_resize(dls, size: tuple[int, int] | None):
    """What the batch transforms that resample (`aug_transforms`' AffineCoordTfm, `RandomResizedCropGPU`)
    do at validation, step by step, as a `BatchResize` (None: none). Those that keep the size resample
    too: at 224x224 their float rounding moves values by 2e-5. `RandomResizedCropGPU` crops the centre to
    its ratio (of an item of the Resize's size: it needs one); both sample the identity grid at their size
    (an AffineCoordTfm without one: the image's own). `size`: the (height, width) items have before them
    (None: each image's own)."""
    import torch
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU

    from services.manifest import BatchResize, ResampleStep

    steps, resizes = [], False
    for transform in dls.valid.after_batch.fs:
        name = type(transform).__name__
        if not isinstance(transform, (AffineCoordTfm, RandomResizedCropGPU)):
            if getattr(transform, "size", None) is not None:
                raise PipelineError(f"the learner's DataLoaders resize batches with {name}; the serving "
                                    "preprocessing reproduces aug_transforms(size=...) and RandomResizedCropGPU only")
            continue
        if transform.mode != "bilinear":
            raise PipelineError(f"the learner's {name} resamples with mode {transform.mode!r}; the serving "
                                "preprocessing reproduces 'bilinear' only")
        crop = None
        if isinstance(transform, RandomResizedCropGPU):
            if size is None:
                raise PipelineError(f"the learner's DataLoaders crop batches ({name}) of images without an item "
                                    "Resize; the serving preprocessing needs the size they crop (item_tfms=Resize)")
            transform.before_call(torch.zeros(1, 3, *size), split_idx=1)
            crop = (*transform.tl, *transform.cp_size)
            crop = crop if crop != (0, 0, *size) else None
            resizes = resizes or crop is not None
            align_corners, pad_mode = True, "reflection"  # TensorImage.affine_coord's defaults, which it uses
        else:
            align_corners, pad_mode = bool(transform.align_corners), str(transform.pad_mode)
        target = transform.size
        target = (target, target) if isinstance(target, int) else tuple(target) if target is not None else None
        resizes = resizes or (target is not None and target != size)
        size = target or size
        steps.append(ResampleStep(crop=crop, size=target, align_corners=align_corners, pad_mode=pad_mode))
    return BatchResize(steps=tuple(steps), resizes=resizes) if steps else None


def fastai_image_tensors(dls, files, color_mode: str = "RGB") -> list:
    """fastai's own validation tensors for image files, one (C, H, W) array each: `PILImage.create`, the
    DataLoaders' `after_item` (Resize, ToTensor) and `after_batch` (IntToFloatTensor, Normalize) as the
    validation DataLoader runs them (split_idx 1: training-only augmentation skipped), which is what
    `test_dl` does (`PILImageBW.create` for a grey `color_mode`). One image at a time: without a Resize
    the images keep their own sizes."""
    from fastai.vision.all import PILImage, PILImageBW, compose_tfms

    def valid(pipeline, x):
        return compose_tfms(x, tfms=pipeline.fs, split_idx=1)

    image_type = PILImageBW if color_mode == "L" else PILImage
    return [valid(dls.valid.after_batch, valid(dls.valid.after_item, image_type.create(f))[None])[0]
            .cpu().float().numpy() for f in files]


def served_image_tensor(path, spec):
    """What the service makes of an uploaded image file (services/, no fastai)."""
    from services.images import decode_image, image_to_tensor

    return image_to_tensor(decode_image(Path(path).read_bytes(), "image", spec.color_mode), spec)


def image_probes(dls, files, spec):
    """Each image file's serving-side tensor beside fastai's (for `Task.preprocessing_probes`)."""
    for path, expected in zip(files, fastai_image_tensors(dls, files, spec.color_mode)):
        yield PreprocessingProbe(Path(path).name, served_image_tensor(path, spec), expected)


def sample_image_files(sample) -> list:
    """The image files of a `--sample` folder (or one image file)."""
    sample = Path(sample).expanduser()
    if sample.is_file() and sample.suffix.lower() in IMAGE_EXTENSIONS:
        files = [sample]
    elif not sample.is_dir():
        raise PipelineError(f"--sample {sample}: expected a folder of images")
    else:
        files = image_files(sample)
    if not files:
        raise PipelineError(f"--sample {sample}: no image files found (looked for .jpg, .jpeg, .png and others)")
    refuse_unreadable(files, f"--sample {sample}")
    return files


def refuse_unreadable(files: list[Path], where: str) -> None:
    """A sample is what parity is judged on: an image in it that cannot be read is an error, not skipped."""
    problems = image_problems(files)
    if problems:
        raise PipelineError(f"{where}: {describe_problems(problems)}")


def read_image_pairs(sample):
    """Image pairs of a Siamese `--sample`: a CSV with `image_a,image_b` columns (paths relative to the
    CSV's folder; an optional `same` column of true/false gives accuracy), or a folder of images paired
    in name order. Returns (pairs, same-or-None)."""
    import numpy as np

    sample = Path(sample).expanduser()
    if sample.suffix.lower() in (".csv", ".tsv"):
        frame = read_table(sample, "--sample", "a CSV with image_a,image_b columns")
        missing = [c for c in ("image_a", "image_b") if c not in frame.columns]
        if missing:
            raise PipelineError(f"--sample {sample}: lacks the column(s) {', '.join(missing)} "
                                f"(columns: {', '.join(map(str, frame.columns))})")
        pairs = [(sample.parent / str(a), sample.parent / str(b)) for a, b in zip(frame["image_a"], frame["image_b"])]
        absent = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if absent:
            raise PipelineError(f"--sample {sample}: {len(absent)} image file(s) not found, e.g. {absent[0]}")
        refuse_unreadable(sorted({p for pair in pairs for p in pair}), f"--sample {sample}")
        same = None
        if "same" in frame.columns:
            answers = {"1": 1, "1.0": 1, "true": 1, "yes": 1, "same": 1, "0": 0, "0.0": 0, "false": 0, "no": 0, "different": 0}
            unknown = [(row, value) for row, value in enumerate(frame["same"]) if str(value).strip().lower() not in answers]
            if unknown:
                row, value = unknown[0]
                raise PipelineError(f"--sample {sample}: column `same` holds {value!r} in data row {row + 1} "
                                    f"({len(unknown)} such row(s)); expected true/false, 1/0, yes/no or same/different")
            same = np.array([answers[str(v).strip().lower()] for v in frame["same"]], dtype=np.int64)
    else:
        files = sample_image_files(sample)
        if len(files) < 2:
            raise PipelineError(f"--sample {sample}: a Siamese sample needs at least 2 images")
        pairs, same = list(zip(files[0::2], files[1::2])), None
    if not pairs:
        raise PipelineError(f"--sample {sample}: no image pairs")
    return pairs, same
