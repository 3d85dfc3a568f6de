"""U-Net segmentation: fastbook's `unet_learner` on CamVid-layout data."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from export.config import OnnxConfig, ParityTolerance, TensorConfig
from export.parity import ParityCase, PreprocessingCheck
from export.report import TrainingSummary
from pipelines.data import digit_scenes_folder, download_book_dataset, image_files
from pipelines.errors import PipelineError
from pipelines.tasks.base import PreparedData, Task
from pipelines.training import TrainingHistory
from pipelines.vision import ARCHITECTURES, imagenet_weights, torchvision_arch
from services.images import decode_image, image_to_tensor
from services.manifest import ImagePreprocessing

# Sizes for the any-size proof: not multiples of 32 (the case fastai's traced graph breaks on) and one that is.
PARITY_SIZES = ((100, 150), (97, 131), (64, 64), (360, 480))


def camvid_label_func(path: Path):
    def label_func(image: Path) -> Path:
        return path / "labels" / f"{image.stem}_P{image.suffix}"

    return label_func


def check_camvid_layout(path: Path) -> list[Path]:
    if not path.exists():
        raise PipelineError(f"--data {path}: no such folder (expected 'digits', 'camvid_tiny', 'camvid' or a folder)")
    missing = [name for name in ("images", "labels", "codes.txt") if not (path / name).exists()]
    if missing:
        raise PipelineError(f"--data {path}: not in CamVid's layout, lacks {', '.join(missing)} "
                            "(images/, labels/<image stem>_P<suffix>, codes.txt)")
    files = image_files(path / "images")
    if not files:
        raise PipelineError(f"--data {path}: no images in {path / 'images'}")
    label_func = camvid_label_func(path)
    unlabelled = [f.name for f in files if not label_func(f).exists()]
    if unlabelled:
        raise PipelineError(f"--data {path}: {len(unlabelled)} images have no label file, e.g. "
                            f"{unlabelled[0]} needs labels/{Path(unlabelled[0]).stem}_P{Path(unlabelled[0]).suffix}")
    return files


class UnetTask(Task):
    name = "unet"
    summary = "an image in, a class per pixel out (fastbook's unet_learner)"
    onnx_config = OnnxConfig(
        inputs=(TensorConfig("image", "float32", {0: "batch", 2: "height", 3: "width"}),),
        outputs=(TensorConfig("logits", "float32", {0: "batch", 2: "height", 3: "width"}),),
        opset=18,
        tolerance=ParityTolerance(logits_atol=1e-3, logits_rtol=1e-4, probability_atol=1e-4, tie_margin=1e-3),
        exporter="dynamo",
    )
    default_batch_size = 8  # the book's CamVid batch size
    book_epochs = 8
    # Measured on the embedded scenes (README results log): about a minute an epoch on 2 cores.
    scratch_epochs = 10
    scratch_lr = 3e-3

    @classmethod
    def cli_options(cls):
        return [
            click.Option(["--data"], default="digits", show_default=True,
                         help="'digits' (embedded, offline: scenes of handwritten digits, 11 classes), "
                              "'camvid_tiny' or 'camvid' (fastai's untar_data), or a folder in CamVid's layout."),
            click.Option(["--arch"], type=click.Choice(ARCHITECTURES), default=None,
                         help="Encoder [default: resnet34 as the book; resnet18 for the embedded digits, "
                              "which train from scratch on 2 cores]."),
            click.Option(["--pretrained"], type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
                         help="ImageNet weights: 'auto' uses them when cached or downloadable, else trains from scratch."),
            click.Option(["--image-size"], default=None,
                         help="Resize training images to HEIGHTxWIDTH [default: no resize; the images' own size]."),
        ]

    # ----- data -------------------------------------------------------------------------------
    def resolve_folder(self, options: dict) -> tuple[Path, str]:
        data = options["data"]
        if data == "digits":
            return digit_scenes_folder(), "digit scenes (scikit-learn load_digits, embedded)"
        if data in ("camvid_tiny", "camvid"):
            from fastai.data.external import URLs

            url = URLs.CAMVID_TINY if data == "camvid_tiny" else URLs.CAMVID
            path = download_book_dataset(url, data, "--data digits or --data FOLDER")
            return path, f"{data} ({path})"
        return Path(data).expanduser(), f"folder {data}"

    def prepare_data(self, options: dict) -> PreparedData:
        from fastai.vision.all import Normalize, Resize, SegmentationDataLoaders, imagenet_stats

        path, source = self.resolve_folder(options)
        files = check_camvid_layout(path)
        codes = [line.strip() for line in (path / "codes.txt").read_text().splitlines() if line.strip()]
        item_tfms = []
        if options["image_size"]:
            try:
                height, width = (int(v) for v in options["image_size"].lower().split("x"))
            except ValueError:
                raise PipelineError(f"--image-size {options['image_size']!r}: expected HEIGHTxWIDTH, e.g. 96x128") from None
            item_tfms = [Resize((height, width))]
        dls = SegmentationDataLoaders.from_label_func(
            path, fnames=files, label_func=camvid_label_func(path), codes=codes, bs=options["batch_size"],
            valid_pct=0.2, seed=options["seed"], item_tfms=item_tfms,
            batch_tfms=[Normalize.from_stats(*imagenet_stats)],
        )
        return PreparedData(dls=dls, source=source, details={
            "images": len(files), "classes": len(codes), "train_images": len(dls.train_ds),
            "valid_images": len(dls.valid_ds), "input_size": "x".join(map(str, dls.one_batch()[0].shape[-2:])),
            "valid_files": [str(f) for f in dls.valid_ds.items[:12]],
            "codes": codes,
        })

    # ----- model and training -----------------------------------------------------------------
    def build_learner(self, data: PreparedData, options: dict):
        from fastai.vision.all import DiceMulti, unet_learner

        from pipelines.tasks.unet_model import pixel_accuracy

        arch = options["arch"] or ("resnet18" if options["data"] == "digits" else "resnet34")
        options["arch"] = arch
        weights, note = imagenet_weights(arch, options["pretrained"])
        learn = unet_learner(data.dls, torchvision_arch(arch), pretrained=weights is not None, normalize=False,
                             metrics=[pixel_accuracy, DiceMulti()])
        learn.pretrained_encoder, learn.pretrained_note = weights is not None, note
        learn.codes = data.details["codes"]
        return learn

    def train(self, learn, options: dict) -> TrainingSummary:
        history = TrainingHistory(learn)
        if learn.pretrained_encoder:
            epochs = options["epochs"] or self.book_epochs
            schedule, reason = f"book: fine_tune({epochs})", "the encoder starts from ImageNet weights"
            click.echo(f"schedule: {schedule} ({reason})")
            history.fit("fine_tune", lambda: learn.fine_tune(epochs))
        else:
            epochs, lr = options["epochs"] or self.scratch_epochs, options["lr"] or self.scratch_lr
            schedule = f"from scratch: fit_one_cycle({epochs}, {lr:g}) on all layers"
            reason = "no pretrained weights, so the whole network trains from the start"
            click.echo(f"schedule: {schedule} ({reason})")
            learn.unfreeze()
            history.fit("all layers", lambda: learn.fit_one_cycle(epochs, lr))
        summary = history.summary(schedule, reason)
        baseline = self.background_baseline(learn)
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

    def model_from_artifact(self, folder: Path):
        """fastai's DynamicUnet again, from an artifact folder's manifest and weights (benchmarks, notebooks)."""
        import torch
        from fastai.vision.all import create_unet_model

        from services.manifest import Manifest

        manifest = Manifest.read(folder)
        provenance = manifest.provenance
        size = tuple(int(v) for v in provenance["data"]["input_size"].split("x"))
        model = create_unet_model(torchvision_arch(provenance["options"]["arch"]), len(manifest.labels), size, pretrained=False)
        weights = Path(provenance.get("artifact_dir", folder)) / "fastai_weights.pth"
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        return model.eval()

    # ----- export -----------------------------------------------------------------------------
    def exportable_module(self, learn):
        from pipelines.tasks.unet_model import ExportableDynamicUnet

        return ExportableDynamicUnet(learn.model.eval().cpu()).eval()

    def example_inputs(self, learn):
        import torch

        height, width = learn.dls.valid.one_batch()[0].shape[-2:]
        return (torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)),)

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        images, masks = [], []
        for x, y in learn.dls.valid:
            images.append(x.cpu().float().numpy())
            masks.append(y.cpu().long().numpy())
        images, masks = np.concatenate(images), np.concatenate(masks)
        metrics = ("accuracy", "dice")
        cases = [ParityCase(f"valid batch {n}", {"image": images[:n]}, masks[:n], f"first {n} validation images", metrics)
                 for n in (1, 3) if n <= len(images)]
        cases.append(ParityCase(f"valid all ({len(images)})", {"image": images}, masks, "the whole validation set", metrics))
        rng = np.random.default_rng(0)
        for height, width in PARITY_SIZES:
            cases.append(ParityCase(f"random {height}x{width}", {"image": rng.standard_normal((1, 3, height, width), dtype=np.float32)},
                                    None, "any input size, including non-multiples of 32"))
        return cases

    def labels(self, learn) -> list[str]:
        return list(learn.codes)

    def preprocessing(self, learn) -> ImagePreprocessing:
        from fastai.vision.all import Normalize, Resize

        normalize = next(t for t in learn.dls.valid.after_batch.fs if isinstance(t, Normalize))
        resize = next((t for t in learn.dls.valid.after_item.fs if isinstance(t, Resize)), None)
        stats = dict(mean=[float(v) for v in normalize.mean.flatten()], std=[float(v) for v in normalize.std.flatten()])
        if resize is None:
            return ImagePreprocessing(color_mode="RGB", resize_method="none", **stats)
        width, height = resize.size
        return ImagePreprocessing(color_mode="RGB", height=int(height), width=int(width),
                                  resize_method="crop" if resize.method == "crop" else "squish", **stats)

    def report_figures(self, learn, folder: Path) -> list[tuple[str, str]]:
        """fastai's `show_results`: validation images, their target masks and the predicted masks."""
        import matplotlib.pyplot as plt

        learn.show_results(max_n=4, figsize=(8, 8))
        plt.gcf().savefig(folder / "show_results.png", dpi=90)
        plt.close("all")
        return [("Targets (left) and predictions (right) on validation images, fastai's show_results", "show_results.png")]

    def fastai_image_tensor(self, dls, path: Path) -> np.ndarray:
        return dls.test_dl([path], bs=1).one_batch()[0][0].cpu().float().numpy()

    def check_preprocessing(self, learn, data: PreparedData) -> PreprocessingCheck:
        spec = self.preprocessing(learn)
        details, worst = [], 0.0
        for file in map(Path, data.details["valid_files"]):
            served = image_to_tensor(decode_image(file.read_bytes(), "image"), spec)
            error = float(np.abs(served - self.fastai_image_tensor(learn.dls, file)).max())
            worst = max(worst, error)
            details.append({"file": file.name, "max_abs_error": error})
        return PreprocessingCheck(compared=len(details), max_abs_error=worst,
                                  passed=worst <= self.onnx_config.tolerance.preprocessing_atol, details=details)
