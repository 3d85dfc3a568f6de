"""U-Net segmentation: fastbook's `unet_learner` on CamVid-layout data."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from export.config import OnnxConfig, ParityTolerance, TensorConfig
from export.parity import ParityCase
from export.quantize import QuantizationGate
from export.report import TrainingSummary
from pipelines.data import (
    digit_scenes_folder, download_book_dataset, image_files, on_every_core, readable_training_images,
)
from pipelines.errors import PipelineError
from pipelines.tasks.base import BuiltLearner, PreparedData, Task, TaskOptions, option
from pipelines.training import TrainingHistory
from pipelines.vision import (
    ARCHITECTURES, color_mode_of, created_image_types, fastai_image_tensors, image_preprocessing, image_probes,
    imagenet_weights, input_and_target_pipelines, sample_image_files, torchvision_arch,
)

# Sizes for the any-size proof: not multiples of 32 (the case fastai's traced graph breaks on) and one that is.
PARITY_SIZES = ((100, 150), (97, 131), (64, 64), (360, 480))


MASK_FOLDERS = ("labels", "masks")
# How a mask is named after its image, CamVid's first; the rule that finds the most masks is used (the first of equals).
MASK_NAMES = ("{stem}_P{suffix}", "{name}", "{stem}.png", "{stem}_P.png", "{stem}_mask{suffix}", "{stem}_mask.png")


def mask_rule(path: Path, files: list[Path]) -> tuple[Path, str]:
    """The mask folder (labels/, as CamVid, or masks/) and the naming rule that finds the most of the images'
    masks: CamVid's `<stem>_P<suffix>`, the image's own name, `<stem>.png` (a JPEG's lossless mask), ...
    """
    folder = next((path / name for name in MASK_FOLDERS if (path / name).is_dir()), path / MASK_FOLDERS[0])
    existing = {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()

    def found(rule):
        return sum(rule.format(stem=f.stem, suffix=f.suffix, name=f.name) in existing for f in files)

    return folder, max(MASK_NAMES, key=found)  # max keeps the first of equal counts


def camvid_label_func(path: Path, files: list[Path] | None = None):
    """The mask of each image, named by `mask_rule` over the images of `path`/images (or `files`)."""
    folder, rule = mask_rule(path, files if files is not None else image_files(path / "images"))

    def label_func(image: Path) -> Path:
        return folder / rule.format(stem=image.stem, suffix=image.suffix, name=image.name)

    return label_func


def check_camvid_layout(path: Path) -> list[Path]:
    if not path.exists():
        raise PipelineError(f"--data {path}: no such folder (expected 'digits', 'camvid_tiny', 'camvid' or a folder)")
    missing = [name for name, there in (("images", (path / "images").exists()),
                                        ("labels (or masks)", any((path / m).is_dir() for m in MASK_FOLDERS)),
                                        ("codes.txt", (path / "codes.txt").exists())) if not there]
    if missing:
        raise PipelineError(f"--data {path}: not in CamVid's layout, lacks {', '.join(missing)} "
                            "(images/, labels/<image stem>_P<suffix>, codes.txt)")
    files = image_files(path / "images")
    if not files:
        raise PipelineError(f"--data {path}: no images in {path / 'images'}")
    label_func = camvid_label_func(path, files)
    unlabelled = [f for f in files if not label_func(f).exists()]
    if unlabelled:
        tried = ", ".join(rule.format(stem=unlabelled[0].stem, suffix=unlabelled[0].suffix, name=unlabelled[0].name)
                          for rule in MASK_NAMES)
        raise PipelineError(f"--data {path}: {len(unlabelled)} images have no mask, e.g. {unlabelled[0].name} needs "
                            f"{label_func(unlabelled[0]).relative_to(path)} (mask names looked for in "
                            f"{'/, '.join(MASK_FOLDERS)}/: {tried})")
    readable = set(readable_training_images([*files, *map(label_func, files)], f"--data {path}"))
    pairs = [f for f in files if f in readable and label_func(f) in readable]
    if not pairs:
        raise PipelineError(f"--data {path}: no image whose label file is readable too")
    return pairs


def check_masks_fit(path: Path, files: list[Path], codes: list[str], resized: bool) -> None:
    """What fastai would fail on minutes into training, said before it starts: a mask whose size is not its
    image's, a class index that codes.txt does not name (255 for "void" is common), and images of several
    sizes without --image-size (they cannot be batched)."""
    from PIL import Image

    label_func = camvid_label_func(path)

    def survey(image: Path):
        with Image.open(image) as picture, Image.open(label_func(image)) as mask:
            return picture.size, mask.size, int(np.asarray(mask.convert("L")).max()), mask.mode  # fastai reads L

    surveys = on_every_core(survey, files)
    for image, (image_size, mask_size, _, _) in zip(files, surveys):
        if image_size != mask_size:
            raise PipelineError(f"--data {path}: {image.name} is {image_size[1]}x{image_size[0]} but its mask "
                                f"{label_func(image).name} is {mask_size[1]}x{mask_size[0]} (HEIGHTxWIDTH)")
    beyond = [(image, largest, mode) for image, (_, _, largest, mode) in zip(files, surveys) if largest >= len(codes)]
    if beyond:
        image, largest, mode = beyond[0]
        colours = ""
        if mode in ("RGB", "RGBA"):
            colours = f" It is an {mode} image: a mask holds one class index per pixel (a greyscale PNG), not colours."
        elif mode == "P":
            colours = (" It is a palette PNG, which fastai reads as the grey of each palette colour, not its index: "
                       "save the indices as a greyscale PNG.")
        raise PipelineError(f"--data {path}: {len(beyond)} mask(s) hold class indices that codes.txt does not name, "
                            f"e.g. {label_func(image).name} holds {largest}; codes.txt names {len(codes)} classes "
                            f"(0-{len(codes) - 1}): codes.txt needs a line for every index the masks hold, or the "
                            f"masks remapped to the ones it names.{colours}")
    common = Counter(image_size for image_size, *_ in surveys).most_common()
    if len(common) > 1 and not resized:
        listed = ", ".join(f"{height}x{width} ({count})" for (width, height), count in common[:4])
        (width, height), _ = common[0]
        raise PipelineError(f"--data {path}: the images differ in size ({listed}{', ...' if len(common) > 4 else ''}); "
                            f"pass --image-size HEIGHTxWIDTH to resize them, e.g. --image-size {height}x{width}")


@dataclass
class UnetOptions(TaskOptions):
    data: str = option("digits", "'digits' (embedded, offline: scenes of handwritten digits, 11 classes), "
                                 "'camvid_tiny' or 'camvid' (fastai's untar_data), or a folder in CamVid's layout.")
    arch: str | None = option(None, "Encoder [default: resnet34 as the book; resnet18 for the embedded digits, "
                                    "which train from scratch on 2 cores].", choices=ARCHITECTURES)
    pretrained: str = option("auto", "ImageNet weights: 'auto' uses them when cached or downloadable, else trains "
                                     "from scratch.", choices=("auto", "yes", "no"))
    image_size: str | None = option(None, "Resize training images to HEIGHTxWIDTH [default: no resize; the images' "
                                          "own size].")


class UnetTask(Task):
    name = "unet"
    summary = "an image in, a class per pixel out (fastbook's unet_learner)"
    Options = UnetOptions
    onnx_config = OnnxConfig(
        inputs=(TensorConfig("image", "float32", {0: "batch", 2: "height", 3: "width"}),),
        outputs=(TensorConfig("logits", "float32", {0: "batch", 2: "height", 3: "width"}),),
        opset=18,
        tolerance=ParityTolerance(logits_atol=1e-3, logits_rtol=1e-4, probability_atol=1e-4, tie_margin=1e-3),
        exporter="dynamo",
    )
    quantization_gate = QuantizationGate("static", {"accuracy": 0.5, "dice": 1.0}, min_agreement=0.98)
    bench_size = (100, 150)  # CamVid's aspect, small
    sample_help = "a folder of images"
    default_batch_size = 8  # the book's CamVid batch size
    book_epochs = 8
    # Measured on the embedded scenes (README results log): about a minute an epoch on 2 cores.
    scratch_epochs = 10
    scratch_lr = 3e-3

    def resolve(self, options: UnetOptions) -> UnetOptions:
        options = super().resolve(options)
        return dataclasses.replace(options, arch=options.arch or ("resnet18" if options.data == "digits" else "resnet34"))

    # ----- data -------------------------------------------------------------------------------
    def resolve_folder(self, options: UnetOptions) -> tuple[Path, str]:
        data = options.data
        if data == "digits":
            return digit_scenes_folder(), "digit scenes (scikit-learn load_digits, embedded)"
        if data in ("camvid_tiny", "camvid"):
            from fastai.data.external import URLs

            url = URLs.CAMVID_TINY if data == "camvid_tiny" else URLs.CAMVID
            path = download_book_dataset(url, data, "--data digits or --data FOLDER")
            return path, f"{data} ({path})"
        return Path(data).expanduser(), f"folder {data}"

    def prepare_data(self, options: UnetOptions) -> PreparedData:
        from fastai.vision.all import Normalize, Resize, SegmentationDataLoaders, imagenet_stats

        path, source = self.resolve_folder(options)
        files = check_camvid_layout(path)
        codes = [line.strip() for line in (path / "codes.txt").read_text().splitlines() if line.strip()]
        item_tfms = []
        if options.image_size:
            try:
                height, width = (int(v) for v in options.image_size.lower().split("x"))
            except ValueError:
                raise PipelineError(f"--image-size {options.image_size!r}: expected HEIGHTxWIDTH, e.g. 96x128") from None
            item_tfms = [Resize((height, width))]
        check_masks_fit(path, files, codes, resized=bool(item_tfms))
        dls = SegmentationDataLoaders.from_label_func(
            path, fnames=files, label_func=camvid_label_func(path), codes=codes, bs=options.batch_size,
            valid_pct=0.2, seed=options.seed, item_tfms=item_tfms,
            batch_tfms=[Normalize.from_stats(*imagenet_stats)],
        )
        return PreparedData(dls=dls, source=source, details={
            "images": len(files), "classes": len(codes), "train_images": len(dls.train_ds),
            "valid_images": len(dls.valid_ds), "input_size": "x".join(map(str, dls.one_batch()[0].shape[-2:])),
            "files": [Path(f) for f in dls.valid_ds.items[:12]],
        })

    def sample_data(self, learn, sample: Path) -> PreparedData:
        files = sample_image_files(sample)
        return PreparedData(dls=learn.dls, source=f"sample {sample}", details={"files": files, "sample_images": len(files)})

    # ----- model and training -----------------------------------------------------------------
    def build_learner(self, data: PreparedData, options: UnetOptions, pretrained: str | None = None) -> BuiltLearner:
        from fastai.vision.all import DiceMulti, unet_learner

        from pipelines.tasks.unet_model import pixel_accuracy

        weights, note = imagenet_weights(options.arch, pretrained or options.pretrained)
        learn = unet_learner(data.dls, torchvision_arch(options.arch), pretrained=weights is not None, normalize=False,
                             metrics=[pixel_accuracy, DiceMulti()])
        return BuiltLearner(learn, options, weights is not None, note)

    def pretrained_schedule(self, built: BuiltLearner, history: TrainingHistory) -> tuple[str, str]:
        epochs = built.options.epochs or self.book_epochs
        schedule, reason = f"book: fine_tune({epochs})", "the encoder starts from ImageNet weights"
        click.echo(f"schedule: {schedule} ({reason})")
        history.fit("fine_tune", lambda: built.learn.fine_tune(epochs))
        return schedule, reason

    def train(self, built: BuiltLearner, data: PreparedData) -> TrainingSummary:
        summary = super().train(built, data)
        baseline = self.background_baseline(built.learn)
        summary.final_metrics["all_background_pixel_accuracy"] = baseline
        click.echo(f"      an all-background prediction would score pixel accuracy {baseline:.4f} and Dice 0")
        return summary

    @staticmethod
    def background_baseline(learn) -> float:
        """Pixel accuracy of predicting `background` (code 0) everywhere on the validation set."""
        background = total = 0
        for _, masks in learn.dls.valid:
            background += int((masks == 0).sum())
            total += masks.numel()
        return background / total

    @classmethod
    def recognises(cls, learn) -> bool:
        from fastai.vision.models.unet import DynamicUnet

        return isinstance(learn.model, DynamicUnet)

    def refusal(self, learn) -> str | None:
        from fastai.vision.core import PILMask

        pipelines = input_and_target_pipelines(learn)
        targets = created_image_types(pipelines[1]) if pipelines is not None else []
        if targets and not any(issubclass(made, PILMask) for made in targets):
            return ("this U-Net learner predicts an image (an ImageBlock target: super-resolution, colourisation, "
                    "denoising), not a class per pixel (MaskBlock); the unet task serves segmentation masks; "
                    "image-to-image learners are not supported yet")
        return None

    # ----- export -----------------------------------------------------------------------------
    def exportable_module(self, learn):
        from pipelines.tasks.unet_model import ExportableDynamicUnet

        return ExportableDynamicUnet(learn.model.eval().cpu()).eval()

    def example_inputs(self, learn):
        import torch

        spec = self.preprocessing(learn)
        height, width = spec.model_size if spec.model_size[0] is not None else (64, 96)
        return (torch.randn(2, len(spec.color_mode), height, width, generator=torch.Generator().manual_seed(0)),)

    def evaluation_arrays(self, learn, data: PreparedData) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Images as fastai feeds them (one array each) and their masks where known (the validation set)."""
        if "sample_images" in data.details:
            return fastai_image_tensors(learn.dls, data.details["files"], self.preprocessing(learn).color_mode), None
        images, masks = [], []
        for x, y in learn.dls.valid:
            images.append(x.cpu().float().numpy())
            masks.append(y.cpu().long().numpy())
        return list(np.concatenate(images)), np.concatenate(masks)

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        images, masks = self.evaluation_arrays(learn, data)
        metrics = ("accuracy", "dice")
        cases = []
        if masks is not None:
            images = np.stack(images)
            cases = [ParityCase(f"valid batch {n}", {"image": images[:n]}, masks[:n], f"first {n} validation images", metrics)
                     for n in (1, 3) if n <= len(images)]
            cases.append(ParityCase(f"valid all ({len(images)})", {"image": images}, masks, "the whole validation set", metrics))
        else:
            for path, image in zip(data.details["files"], images):
                cases.append(ParityCase(f"sample {Path(path).name}", {"image": image[None]}, None,
                                        f"{image.shape[1]}x{image.shape[2]}"))
        rng = np.random.default_rng(0)
        channels = images[0].shape[0]
        for height, width in PARITY_SIZES:
            random_image = rng.standard_normal((1, channels, height, width), dtype=np.float32)
            cases.append(ParityCase(f"random {height}x{width}", {"image": random_image},
                                    None, "any input size, including non-multiples of 32", synthetic=True))
        return cases

    def labels(self, learn) -> list[str]:
        from services.schemas import NOT_SEEN

        codes = self.mask_codes(learn)
        if len(codes) > NOT_SEEN:
            raise PipelineError(f"this U-Net has {len(codes)} classes; the served mask is a greyscale PNG whose "
                                f"pixels hold class indices 0-{NOT_SEEN - 1} ({NOT_SEEN}: not seen), so at most "
                                f"{NOT_SEEN} classes are served")
        return codes

    def mask_codes(self, learn) -> list[str]:
        """The mask codes: MaskBlock(codes) puts them on the `AddMaskCodes` transform (and `dls.vocab` while
        the DataLoaders still hold data)."""
        from fastai.vision.all import AddMaskCodes

        mask_codes = next((t for t in learn.dls.valid.after_item.fs if isinstance(t, AddMaskCodes)), None)
        codes = mask_codes.codes if mask_codes is not None else None
        if codes is None:
            codes = getattr(learn.dls, "vocab", None)
        if codes is None and mask_codes is None:  # no MaskBlock at all: the targets are not masks
            raise PipelineError("this U-Net learner's DataLoaders carry no MaskBlock (no class codes); the unet task "
                                "serves segmentation masks")
        if codes is None:  # MaskBlock() without codes: the classes are the output channels' numbers
            from torch import nn

            last = [m for m in learn.model.modules() if isinstance(m, nn.Conv2d)][-1]
            return [str(code) for code in range(last.out_channels)]
        return [str(code) for code in codes]

    def preprocessing(self, learn):
        spec = image_preprocessing(learn.dls, batch_resizing=True, color_mode=color_mode_of(learn.model))
        if spec.batch_resize is not None and any(step.crop for step in spec.batch_resize.steps):
            raise PipelineError("the learner's DataLoaders crop batches (RandomResizedCropGPU); the service maps a "
                                "U-Net's mask back onto the whole image, so it serves batch resizing without a crop only")
        return spec

    def report_figures(self, learn, folder: Path) -> list[tuple[str, str]]:
        """fastai's `show_results`: validation images, their target masks and the predicted masks."""
        from export.report import pyplot

        plt = pyplot()
        if not len(learn.dls.valid_ds):
            return []
        learn.show_results(max_n=4, figsize=(8, 8))
        plt.gcf().savefig(folder / "show_results.png", dpi=90)
        plt.close("all")
        return [("Targets (left) and predictions (right) on validation images, fastai's show_results", "show_results.png")]

    def preprocessing_probes(self, learn, data: PreparedData):
        return image_probes(learn.dls, data.details["files"], self.preprocessing(learn))
