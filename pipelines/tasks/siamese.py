"""Siamese pairs: the recipe of fastbook's "Application Architectures Deep Dive", kept recognisable.

Two images in, "same class or not" out. One shared encoder (`create_body(resnet, cut=-2)`) runs over
both images; the features are concatenated and fed to `create_head(512*2, 2, ps=0.5)`.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

from export.config import OnnxConfig, ParityTolerance, TensorConfig
from export.parity import ParityCase, PreprocessingCheck
from export.report import TrainingSummary
from pipelines.data import digits_image_folder, download_book_dataset, image_files
from pipelines.errors import PipelineError
from pipelines.tasks.base import PreparedData, Task
from pipelines.training import TrainingHistory
from pipelines.vision import ARCHITECTURES, imagenet_weights, torchvision_arch
from services.images import image_to_tensor
from services.manifest import ImagePreprocessing

BOOK_LABEL_PATTERN = r"^(.*)_\d+.jpg$"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

def book():
    """The book's classes; imported on first use because importing fastai takes several seconds."""
    from pipelines.tasks import siamese_book

    return siamese_book


def regex_label_func(pattern: str):
    compiled = re.compile(pattern)

    def label_func(fname: Path) -> str:
        match = compiled.match(Path(fname).name)
        if match is None:
            raise PipelineError(f"file name {Path(fname).name!r} does not match the label pattern {pattern!r}")
        return match.groups()[0]

    return label_func


def parent_label_func(fname: Path) -> str:
    return Path(fname).parent.name


def load_encoder(arch: str, pretrained: str):
    """A torchvision ResNet body cut at -2, as the book; ImageNet weights when they can be had."""
    from fastai.vision.all import create_body

    weights, note = imagenet_weights(arch, pretrained)
    model = torchvision_arch(arch)(weights=weights)
    return create_body(model, pretrained=False, cut=-2), weights is not None, note


class SiameseTask(Task):
    name = "siamese"
    summary = "two images in, same class or not out (fastbook's Siamese model)"
    onnx_config = OnnxConfig(
        inputs=(
            TensorConfig("image_a", "float32", {0: "batch", 2: "height", 3: "width"}),
            TensorConfig("image_b", "float32", {0: "batch", 2: "height", 3: "width"}),
        ),
        outputs=(TensorConfig("logits", "float32", {0: "batch"}),),
        opset=18,
        tolerance=ParityTolerance(logits_atol=1e-4, logits_rtol=1e-4, probability_atol=1e-5),
        exporter="dynamo",
    )
    # A second image size for the dynamic height/width check: not square, not a multiple of 32.
    second_size = (72, 88)
    book_lr = 3e-3
    book_unfrozen_epochs = 4
    # Measured on the embedded digits (README results log): from scratch the whole network needs
    # more epochs and a higher learning rate than the book's pretrained schedule.
    scratch_lr = 1e-2
    scratch_epochs = 16

    @classmethod
    def cli_options(cls):
        return [
            click.Option(["--data"], default="digits", show_default=True,
                         help="'digits' (embedded, offline), 'pets' (Oxford-IIIT Pets via fastai's untar_data), "
                              "or a folder of images."),
            click.Option(["--label-from"], type=click.Choice(["filename", "folder"]), default="filename",
                         show_default=True, help="Where a user folder's class comes from."),
            click.Option(["--label-pattern"], default=BOOK_LABEL_PATTERN, show_default=True,
                         help="Regex whose first group is the class, matched against the file name."),
            click.Option(["--image-size"], type=click.IntRange(16, 1024), default=None,
                         help="Square training size in pixels [default: 32 for digits, 224 otherwise]."),
            click.Option(["--arch"], type=click.Choice(ARCHITECTURES), default="resnet34", show_default=True,
                         help="Encoder architecture (torchvision ResNet, cut at -2 as in the book)."),
            click.Option(["--pretrained"], type=click.Choice(["auto", "yes", "no"]), default="auto",
                         show_default=True,
                         help="ImageNet weights: 'auto' uses them when cached or downloadable, else trains from scratch."),
            click.Option(["--frozen-epochs"], type=click.IntRange(0), default=4, show_default=True,
                         help="Pretrained schedule: epochs with the encoder frozen."),
            click.Option(["--unfrozen-lr"], type=(float, float), default=(1e-6, 1e-4), show_default=True,
                         help="Pretrained schedule: discriminative learning rates (encoder, head) after unfreezing."),
        ]

    # ----- data -------------------------------------------------------------------------------
    def resolve_files(self, options: dict) -> tuple[list[Path], callable, str]:
        data = options["data"]
        if data == "digits":
            folder = digits_image_folder()
            return image_files(folder), regex_label_func(BOOK_LABEL_PATTERN), "digits (scikit-learn load_digits, embedded)"
        if data == "pets":
            from fastai.data.external import URLs

            path = download_book_dataset(URLs.PETS, "Oxford-IIIT Pets", "--data digits or --data FOLDER")
            return image_files(path / "images"), regex_label_func(BOOK_LABEL_PATTERN), f"Oxford-IIIT Pets ({path})"
        folder = Path(data).expanduser()
        if not folder.exists():
            raise PipelineError(f"--data {data}: no such folder (expected 'digits', 'pets' or a folder of images)")
        if not folder.is_dir():
            raise PipelineError(f"--data {data}: not a folder")
        files = image_files(folder)
        if not files:
            raise PipelineError(f"--data {data}: no image files found (looked for {', '.join(sorted({'.jpg', '.png', '.jpeg'}))} and others)")
        if options["label_from"] == "folder":
            return files, parent_label_func, f"folder {folder} (class = parent folder)"
        return files, regex_label_func(options["label_pattern"]), f"folder {folder} (class from file name)"

    def prepare_data(self, options: dict) -> PreparedData:
        from fastai.vision.all import (
            L, IntToFloatTensor, Normalize, RandomSplitter, Resize, TfmdLists, ToTensor, imagenet_stats,
        )

        files, label_func, source = self.resolve_files(options)
        files = L(files)
        labels = [label_func(f) for f in files]
        if len(set(labels)) < 2:
            raise PipelineError(f"{source}: found {len(set(labels))} class(es); a Siamese model needs at least 2")
        splits = RandomSplitter(seed=options["seed"])(files)
        for split_name, split in zip(("training", "validation"), splits):
            present = {labels[i] for i in split}
            missing = sorted(set(labels) - present)
            if missing:
                raise PipelineError(
                    f"{source}: classes {missing[:5]} have no image in the {split_name} split; "
                    "give each class more images, or try another --seed"
                )
        size = options["image_size"] or (32 if options["data"] == "digits" else 224)
        options["image_size"] = size
        tfm = book().SiameseTransform(files, splits, label_func)
        tls = TfmdLists(files, tfm, splits=splits)
        dls = tls.dataloaders(
            after_item=[Resize(size), ToTensor],
            after_batch=[IntToFloatTensor, Normalize.from_stats(*imagenet_stats)],
            bs=options["batch_size"],
        )
        return PreparedData(
            dls=dls,
            source=source,
            details={
                "images": len(files),
                "classes": len(tfm.labels),
                "train_pairs": len(splits[0]),
                "valid_pairs": len(splits[1]),
                "image_size": size,
                "valid_files": [str(files[i]) for i in splits[1][:16]],
            },
        )

    # ----- model and training -----------------------------------------------------------------
    @staticmethod
    def build_model(encoder):
        from fastai.vision.all import create_head, num_features_model

        head = create_head(num_features_model(encoder) * 2, 2, ps=0.5)
        return book().SiameseModel(encoder, head)

    def model_from_artifact(self, folder: Path):
        """The trained PyTorch model again, from an artifact folder (for benchmarks and notebooks)."""
        import torch

        from services.manifest import Manifest

        provenance = Manifest.read(folder).provenance
        model = self.build_model(load_encoder(provenance["options"]["arch"], "no")[0])
        weights = Path(provenance.get("artifact_dir", folder)) / "fastai_weights.pth"
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        return model.eval()

    def build_learner(self, data: PreparedData, options: dict):
        from fastai.vision.all import Learner, accuracy

        encoder, used_pretrained, note = load_encoder(options["arch"], options["pretrained"])
        b = book()
        model = self.build_model(encoder)
        learn = Learner(data.dls, model, loss_func=b.SiameseLoss(), splitter=b.siamese_splitter, metrics=accuracy)
        learn.pretrained_encoder = used_pretrained
        learn.pretrained_note = note
        return learn

    def train(self, learn, options: dict) -> TrainingSummary:
        history = TrainingHistory(learn)
        if learn.pretrained_encoder:
            lr = options["lr"] or self.book_lr
            epochs = options["epochs"] or self.book_unfrozen_epochs
        else:
            lr = options["lr"] or self.scratch_lr
            epochs = options["epochs"] or self.scratch_epochs
        if learn.pretrained_encoder:
            frozen_epochs = options["frozen_epochs"]
            low, high = options["unfrozen_lr"]
            schedule = (f"book: freeze(); fit_one_cycle({frozen_epochs}, {lr:g}); unfreeze(); "
                        f"fit_one_cycle({epochs}, slice({low:g}, {high:g}))")
            reason = "the encoder starts from ImageNet weights"
            click.echo(f"schedule: {schedule} ({reason})")
            learn.freeze()
            history.fit("frozen", lambda: learn.fit_one_cycle(frozen_epochs, lr))
            learn.unfreeze()
            history.fit("unfrozen", lambda: learn.fit_one_cycle(epochs, slice(low, high)))
        else:
            schedule = f"from scratch: fit_one_cycle({epochs}, {lr:g}) on all layers"
            reason = ("no pretrained weights, and the book's frozen-encoder schedule stays at chance with a "
                      "random encoder, so the whole network trains from the start")
            click.echo(f"schedule: {schedule} ({reason})")
            learn.unfreeze()
            history.fit("all layers", lambda: learn.fit_one_cycle(epochs, lr))
        return history.summary(schedule, reason)

    # ----- export -----------------------------------------------------------------------------
    def exportable_module(self, learn):
        return learn.model.eval().cpu()

    def example_inputs(self, learn):
        import torch

        size = learn.dls.valid.one_batch()[0].shape[-1]
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(2, 3, size, size, generator=generator), torch.randn(2, 3, size, size, generator=generator))

    def validation_arrays(self, learn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        firsts, seconds, targets = [], [], []
        for x1, x2, y in learn.dls.valid:
            firsts.append(x1.cpu().float().numpy())
            seconds.append(x2.cpu().float().numpy())
            targets.append(y.cpu().long().numpy())
        return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(targets)

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        first, second, targets = self.validation_arrays(learn)
        total = len(targets)
        cases = [
            ParityCase(f"valid batch {n}", {"image_a": first[:n], "image_b": second[:n]}, targets[:n],
                       f"first {n} validation pairs")
            for n in (1, 7) if n <= total
        ]
        cases.append(ParityCase(f"valid all ({total})", {"image_a": first, "image_b": second}, targets,
                                "the whole validation set"))
        rng = np.random.default_rng(0)
        height, width = self.second_size
        cases.append(ParityCase(
            f"random {height}x{width} batch 3",
            {"image_a": rng.standard_normal((3, 3, height, width), dtype=np.float32),
             "image_b": rng.standard_normal((3, 3, height, width), dtype=np.float32)},
            None, "random inputs at a second image size (dynamic height/width)",
        ))
        return cases

    def labels(self, learn) -> list[str]:
        return ["different", "same"]

    def preprocessing(self, learn) -> ImagePreprocessing:
        from fastai.vision.all import Normalize, Resize

        resize = next(t for t in learn.dls.valid.after_item.fs if isinstance(t, Resize))
        normalize = next(t for t in learn.dls.valid.after_batch.fs if isinstance(t, Normalize))
        width, height = resize.size  # fastai stores (width, height)
        return ImagePreprocessing(
            color_mode="RGB", height=int(height), width=int(width),
            resize_method="crop" if resize.method == "crop" else "squish",
            resample="bilinear",
            mean=[float(v) for v in normalize.mean.flatten()],
            std=[float(v) for v in normalize.std.flatten()],
        )

    def pair_test_dl(self, dls, pairs: list[tuple[Path, Path]]):
        """fastai's own inference pipeline for raw file pairs: `dls.test_dl` over `ImagePair`s."""
        return dls.test_dl([book().ImagePair(a, c) for a, c in pairs], rm_type_tfms=0, bs=max(1, len(pairs)))

    def fastai_pair_tensors(self, dls, pairs: list[tuple[Path, Path]]):
        x1, x2 = self.pair_test_dl(dls, pairs).one_batch()[:2]
        return x1.cpu().float().numpy(), x2.cpu().float().numpy()

    def check_preprocessing(self, learn, data: PreparedData) -> PreprocessingCheck:
        from PIL import Image

        spec = self.preprocessing(learn)
        files = [Path(f) for f in data.details["valid_files"]]
        pairs = list(zip(files[0::2], files[1::2]))
        first, second = self.fastai_pair_tensors(learn.dls, pairs)
        details, worst = [], 0.0
        for (a, c), ta, tc in zip(pairs, first, second):
            for path, expected in ((a, ta), (c, tc)):
                with Image.open(path) as image:
                    served = image_to_tensor(image.convert("RGB"), spec)
                error = float(np.abs(served - expected).max())
                worst = max(worst, error)
                details.append({"file": path.name, "max_abs_error": error})
        return PreprocessingCheck(compared=len(details), max_abs_error=worst,
                                  passed=worst <= self.onnx_config.tolerance.preprocessing_atol, details=details)
