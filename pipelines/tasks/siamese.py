"""Siamese pairs: the recipe of fastbook's "Application Architectures Deep Dive", kept recognisable.

Two images in, "same class or not" out. One shared encoder (`create_body(resnet, cut=-2)`) runs over
both images; the features are concatenated and fed to `create_head(512*2, 2, ps=0.5)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from export.config import OnnxConfig, ParityTolerance, TensorConfig
from export.parity import ParityCase
from export.quantize import QuantizationGate
from pipelines.errors import PipelineError
from pipelines.tasks.base import BuiltLearner, PreparedData, Task, option
from pipelines.training import TrainingHistory
from pipelines.vision import (
    ImageFolderOptions, fastai_image_tensors, image_preprocessing, image_probes, imagenet_weights, read_image_pairs,
    resolve_image_files, torchvision_arch, training_split,
)
from services.messages import message_line

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

def book():
    """The book's classes; imported on first use because importing fastai takes several seconds."""
    from pipelines.tasks import siamese_book

    return siamese_book


def load_encoder(arch: str, pretrained: str):
    """A torchvision ResNet body cut at -2, as the book; ImageNet weights when they can be had."""
    from fastai.vision.all import create_body

    weights, note = imagenet_weights(arch, pretrained)
    model = torchvision_arch(arch)(weights=weights)
    return create_body(model, pretrained=False, cut=-2), weights is not None, note


@dataclass
class SiameseOptions(ImageFolderOptions):
    frozen_epochs: int = option(4, "Pretrained schedule: epochs with the encoder frozen.", type=click.IntRange(0))
    unfrozen_lr: tuple[float, float] = option((1e-6, 1e-4), "Pretrained schedule: discriminative learning rates "
                                                            "(encoder, head) after unfreezing.", type=(float, float))


class SiameseTask(Task):
    name = "siamese"
    summary = "two images in, same class or not out (fastbook's Siamese model)"
    Options = SiameseOptions
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
    quantization_gate = QuantizationGate("static", {"accuracy": 1.0}, min_agreement=0.99)
    bench_size = (224, 224)  # the book's pets
    sample_help = "a CSV with image_a,image_b columns (paths relative to the CSV; optional `same` column), or a folder of images paired in name order"
    # A second image size for the dynamic height/width check: not square, not a multiple of 32.
    second_size = (72, 88)
    book_lr = 3e-3
    book_unfrozen_epochs = 4
    # Measured on the embedded digits (README results log): from scratch the whole network needs
    # more epochs and a higher learning rate than the book's pretrained schedule.
    scratch_lr = 1e-2
    scratch_epochs = 16
    scratch_reason = ("no pretrained weights, and the book's frozen-encoder schedule stays at chance with a "
                      "random encoder, so the whole network trains from the start")

    def resolve(self, options: SiameseOptions) -> SiameseOptions:
        options = super().resolve(options)
        return dataclasses.replace(options, image_size=options.image_size or (32 if options.data == "digits" else 224))

    # ----- data -------------------------------------------------------------------------------
    def prepare_data(self, options: SiameseOptions) -> PreparedData:
        from fastai.vision.all import (
            L, IntToFloatTensor, Normalize, Resize, TfmdLists, ToTensor, imagenet_stats,
        )

        files, label_func, source = resolve_image_files(options)
        labels = [label_func(f) for f in files]
        if len(set(labels)) < 2:
            raise PipelineError(f"{source}: found {len(set(labels))} class(es); a Siamese model needs at least 2")
        files, labels, splits = training_split(options, files, labels)
        files = L(files)
        for split_name, split in zip(("training", "validation"), splits):
            missing = sorted(set(labels) - {labels[i] for i in split})
            if missing:
                raise PipelineError(
                    f"{source}: classes {missing[:5]} have no image in the {split_name} split; "
                    "give each class more images, or try another --seed"
                )
        tfm = book().SiameseTransform(files, splits, label_func)
        tls = TfmdLists(files, tfm, splits=splits)
        dls = tls.dataloaders(
            after_item=[Resize(options.image_size), ToTensor],
            after_batch=[IntToFloatTensor, Normalize.from_stats(*imagenet_stats)],
            bs=options.batch_size,
        )
        valid_files = [files[i] for i in splits[1][:16]]
        return PreparedData(dls=dls, source=source, details={
            "images": len(files), "classes": len(tfm.labels), "train_pairs": len(splits[0]),
            "valid_pairs": len(splits[1]), "image_size": options.image_size,
            "pairs": list(zip(valid_files[0::2], valid_files[1::2])),
        })

    def sample_data(self, learn, sample: Path) -> PreparedData:
        pairs, same = read_image_pairs(sample)
        return PreparedData(dls=learn.dls, source=f"sample {sample}", details={
            "pairs": pairs, "sample_pairs": len(pairs), "targets": same,
        })

    # ----- model and training -----------------------------------------------------------------
    @staticmethod
    def build_model(encoder):
        from fastai.vision.all import create_head, num_features_model

        head = create_head(num_features_model(encoder) * 2, 2, ps=0.5)
        return book().SiameseModel(encoder, head)

    def build_learner(self, data: PreparedData, options: SiameseOptions, pretrained: str | None = None) -> BuiltLearner:
        from fastai.vision.all import Learner, accuracy

        encoder, used_pretrained, note = load_encoder(options.arch, pretrained or options.pretrained)
        b = book()
        learn = Learner(data.dls, self.build_model(encoder), loss_func=b.SiameseLoss(), splitter=b.siamese_splitter,
                        metrics=accuracy)
        return BuiltLearner(learn, options, used_pretrained, note)

    def pretrained_schedule(self, built: BuiltLearner, history: TrainingHistory) -> tuple[str, str]:
        learn, options = built.learn, built.options
        lr, epochs = options.lr or self.book_lr, options.epochs or self.book_unfrozen_epochs
        low, high = options.unfrozen_lr
        schedule = (f"book: freeze(); fit_one_cycle({options.frozen_epochs}, {lr:g}); unfreeze(); "
                    f"fit_one_cycle({epochs}, slice({low:g}, {high:g}))")
        reason = "the encoder starts from ImageNet weights"
        click.echo(f"schedule: {schedule} ({reason})")
        learn.freeze()
        history.fit("frozen", lambda: learn.fit_one_cycle(options.frozen_epochs, lr))
        learn.unfreeze()
        history.fit("unfrozen", lambda: learn.fit_one_cycle(epochs, slice(low, high)))
        return schedule, reason

    @classmethod
    def recognises(cls, learn) -> bool:
        model = learn.model
        return type(model).__name__ == "SiameseModel" and hasattr(model, "encoder") and hasattr(model, "head")

    def refusal(self, learn) -> str | None:
        """A SiameseModel that fails on a pair of images: typically a notebook's own, whose pickle names only
        `__main__.SiameseModel`, stood in for by the book's definition that does not fit its layers."""
        import torch

        try:
            with torch.no_grad():
                learn.model.eval().cpu()(*self.example_inputs(learn))
        except Exception as error:  # whatever the user's layers raise on the book's forward
            problem = f"{type(error).__name__}: {message_line(error)}"
            if type(learn.model) is not book().SiameseModel:
                return f"this learner's SiameseModel fails on a pair of images ({problem})"
            return (f"this learner's SiameseModel was defined in a notebook, and the book's definition that stands in "
                    f"for it (the head on both encodings concatenated) does not fit its layers ({problem}); export "
                    "from a script that defines or imports your SiameseModel and then calls pipelines.cli.main()")
        return None

    # ----- export -----------------------------------------------------------------------------
    def exportable_module(self, learn):
        """The one-pass graph where it computes what the model computes (the book's forward); a model with a
        forward of its own (the encodings' difference, say) is exported as it is, two encoder passes."""
        import torch

        from pipelines.tasks.siamese_export import OnePassSiamese

        model = learn.model.eval().cpu()
        one_pass = OnePassSiamese(model).eval()
        example, tolerance = self.example_inputs(learn), self.onnx_config.tolerance
        try:
            with torch.no_grad():
                same = torch.allclose(one_pass(*example), model(*example), atol=tolerance.logits_atol,
                                      rtol=tolerance.logits_rtol)
        except RuntimeError:  # the head does not take the concatenated encodings
            same = False
        if same:
            return one_pass
        click.echo("      this SiameseModel's forward is not the book's (the head on both encodings concatenated): "
                   "exported as it is, two encoder passes")
        return model

    def reference_module(self, learn):
        return learn.model.eval().cpu()  # fastai's SiameseModel, two encoder passes

    def bench_variants(self, learn) -> dict:
        return {"two-pass, fastai's SiameseModel as exported before the one-pass graph": learn.model.eval().cpu()}

    def example_inputs(self, learn):
        import torch

        spec = self.preprocessing(learn)
        generator = torch.Generator().manual_seed(0)
        shape = (2, 3, *spec.model_size)
        return torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)

    def evaluation_arrays(self, learn, data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Both images of each pair as fastai feeds them, and whether the pair is of one class (when known)."""
        if "sample_pairs" in data.details:
            pairs = data.details["pairs"]
            firsts = np.stack(fastai_image_tensors(learn.dls, [a for a, _ in pairs]))
            seconds = np.stack(fastai_image_tensors(learn.dls, [b for _, b in pairs]))
            return firsts, seconds, data.details["targets"]
        firsts, seconds, targets = [], [], []
        for x1, x2, y in learn.dls.valid:
            firsts.append(x1.cpu().float().numpy())
            seconds.append(x2.cpu().float().numpy())
            targets.append(y.cpu().long().numpy())
        return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(targets)

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        first, second, targets = self.evaluation_arrays(learn, data)
        total = len(first)
        where = "sample" if "sample_pairs" in data.details else "valid"

        def part(n):
            return None if targets is None else targets[:n]

        cases = [ParityCase(f"{where} batch {n}", {"image_a": first[:n], "image_b": second[:n]}, part(n),
                            f"first {n} {where} pairs") for n in (1, 7) if n <= total]
        cases.append(ParityCase(f"{where} all ({total})", {"image_a": first, "image_b": second}, targets,
                                f"every {where} pair"))
        rng = np.random.default_rng(0)
        height, width = self.second_size
        cases.append(ParityCase(
            f"random {height}x{width} batch 3",
            {"image_a": rng.standard_normal((3, 3, height, width), dtype=np.float32),
             "image_b": rng.standard_normal((3, 3, height, width), dtype=np.float32)},
            None, "random inputs at a second image size (dynamic height/width)", synthetic=True,
        ))
        return cases

    def labels(self, learn) -> list[str]:
        return ["different", "same"]

    def preprocessing(self, learn):
        return image_preprocessing(learn.dls)

    def preprocessing_probes(self, learn, data: PreparedData):
        files = [path for pair in data.details["pairs"] for path in pair]
        return image_probes(learn.dls, files, self.preprocessing(learn))

    def pair_test_dl(self, dls, pairs: list[tuple[Path, Path]]):
        """fastai's own inference pipeline for raw file pairs: `dls.test_dl` over the book transform's
        `ImagePair`s (an independent path to the same tensors, used by the tests)."""
        return dls.test_dl([book().ImagePair(a, c) for a, c in pairs], rm_type_tfms=0, bs=max(1, len(pairs)))

    def fastai_pair_tensors(self, dls, pairs: list[tuple[Path, Path]]):
        x1, x2 = self.pair_test_dl(dls, pairs).one_batch()[:2]
        return x1.cpu().float().numpy(), x2.cpu().float().numpy()
