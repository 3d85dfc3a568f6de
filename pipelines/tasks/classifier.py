"""Image classification: the chapter's first model, fastai's `vision_learner` (the pet recognizer), with the
head and splitter choices the chapter's questions ask about.

`vision_learner(dls, arch)` cuts the architecture's body where `model_meta` says and adds `create_head`:
a concat (or average) pooling layer, then Linear/BatchNorm/Dropout blocks. `--head-pool`, `--head-layers`,
`--head-dropout` and `--head-bn` change that head; `--splitter per-block` gives the stem and every ResNet
block its own parameter group (the chapter's exercise), trained with discriminative learning rates.
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
from pipelines.tasks.base import BuiltLearner, PreparedData, Task, option, single_label_refusal
from pipelines.training import TrainingHistory
from pipelines.vision import (
    ImageFolderOptions, color_mode_of, fastai_image_tensors, image_in_target_out, image_preprocessing, image_probes,
    imagenet_weights, resolve_image_files, sample_image_files, torchvision_arch, training_split,
)
from services.messages import message_line


@dataclass
class ClassifierOptions(ImageFolderOptions):
    head_pool: str = option("concat", "Pooling at the head's start: fastai's AdaptiveConcatPool2d (max and average, "
                                      "concatenated) or AdaptiveAvgPool2d.", choices=("concat", "avg"))
    head_layers: str | None = option(None, "Hidden sizes of the head's linear layers, e.g. 512 or 512,256 "
                                           "[default: fastai's, one layer of 512].")
    head_dropout: float = option(0.5, "Dropout of the head's last layer (fastai's `ps`; earlier layers get half).",
                                 type=click.FloatRange(0, 1, max_open=True))
    head_bn: bool = option(True, "BatchNorm in the head's linear blocks.", flag=True)
    splitter: str = option("default", "Parameter groups: fastai's default for the architecture (for ResNets: stem and stages "
                                      "1-2, stages 3-4, head), or "
                                      "per-block (the stem, each ResNet stage, the head) with discriminative "
                                      "learning rates.", choices=("default", "per-block"))
    augment: str = option("auto", "Training-time augmentation (fastai's aug_transforms; validation is never "
                                  "augmented): 'flip' includes horizontal flips, 'no-flip' leaves them out, 'auto' "
                                  "is no-flip for digits (a flipped digit is another shape) and flip otherwise.",
                          choices=("auto", "flip", "no-flip", "none"))
    tta: bool = option(False, "Report fastai's test-time augmentation accuracy too (the exported model is the "
                              "plain forward pass: TTA is not exported).", flag=True)


def head_sizes(value: str | None) -> list[int] | None:
    if value is None or not value.strip():
        return None
    try:
        sizes = [int(size) for size in value.split(",")]
    except ValueError:
        raise PipelineError(f"--head-layers {value!r}: expected sizes like 512 or 512,256") from None
    if any(size < 1 for size in sizes):
        raise PipelineError(f"--head-layers {value!r}: sizes must be positive")
    return sizes


def without_batchnorm(head):
    """The head with its BatchNorm1d layers left out (fastai's create_head always puts them after the first)."""
    from torch import nn

    def strip(module):
        if isinstance(module, nn.BatchNorm1d):
            return None
        if isinstance(module, nn.Sequential):
            return nn.Sequential(*[m for m in map(strip, module) if m is not None])
        return module

    return strip(head)


def per_block_splitter(model):
    """The stem (conv, bn, relu, maxpool), each ResNet stage, and the head: one parameter group each."""
    from fastai.vision.all import params

    body, head = model[0], model[1]
    stem = [p for layer in list(body.children())[:4] for p in params(layer)]
    return [stem, *[params(stage) for stage in list(body.children())[4:]], params(head)]


class ClassifierTask(Task):
    name = "classifier"
    summary = "an image in, its class out (fastbook's vision_learner pet recognizer)"
    Options = ClassifierOptions
    onnx_config = OnnxConfig(
        inputs=(TensorConfig("image", "float32", {0: "batch", 2: "height", 3: "width"}),),
        outputs=(TensorConfig("logits", "float32", {0: "batch"}),),
        opset=18,
        tolerance=ParityTolerance(logits_atol=1e-4, logits_rtol=1e-4, probability_atol=1e-5),
        exporter="dynamo",
    )
    quantization_gate = QuantizationGate("static", {"accuracy": 1.0}, min_agreement=0.99)
    bench_size = (224, 224)  # the book's pets
    sample_help = "a folder of images (class subfolders named like the learner's classes add accuracy)"
    # A second size for the dynamic height/width check: not square, not a multiple of 32.
    second_size = (72, 88)
    book_epochs = 2  # the chapter's pet recognizer: learn.fine_tune(2)
    # Measured on the embedded digits (README results log).
    scratch_epochs = 6
    scratch_lr = 1e-2

    def resolve(self, options: ClassifierOptions) -> ClassifierOptions:
        options = super().resolve(options)
        head_sizes(options.head_layers)  # a bad value is a clear error before any data is read
        digits = options.data == "digits"
        return dataclasses.replace(
            options, image_size=options.image_size or (32 if digits else 224), augment=options.augment if options.augment != "auto" else ("no-flip" if digits else "flip"),
        )

    # ----- data -------------------------------------------------------------------------------
    def prepare_data(self, options: ClassifierOptions) -> PreparedData:
        from fastai.vision.all import (
            CategoryBlock, DataBlock, ImageBlock, ImageDataLoaders, Normalize, Resize, aug_transforms, imagenet_stats,
        )

        files, label_func, source = resolve_image_files(options)
        labels = [label_func(f) for f in files]
        if len(set(labels)) < 2:
            raise PipelineError(f"{source}: found {len(set(labels))} class(es); a classifier needs at least 2")
        files, labels, splits = training_split(options, files, labels)
        augment = [] if options.augment == "none" else aug_transforms(do_flip=options.augment == "flip")
        # ImageDataLoaders.from_lists, with the split given
        block = DataBlock.from_columns(blocks=(ImageBlock, CategoryBlock), splitter=lambda items: splits,
                                       item_tfms=Resize(options.image_size),
                                       batch_tfms=[*augment, Normalize.from_stats(*imagenet_stats)])
        dls = ImageDataLoaders.from_dblock(block, (files, labels), path=Path("."), bs=options.batch_size)
        return PreparedData(dls=dls, source=source, details={
            "images": len(files), "classes": len(dls.vocab), "train_images": len(dls.train_ds),
            "valid_images": len(dls.valid_ds), "image_size": options.image_size,
            "files": [Path(item[0]) for item in dls.valid_ds.items[:16]],  # from_lists items: (file, label)
        })

    def sample_data(self, learn, sample: Path) -> PreparedData:
        files = sample_image_files(sample)
        classes = [str(c) for c in learn.dls.vocab]
        parents = [Path(f).parent.name for f in files]
        targets = np.array([classes.index(p) for p in parents]) if set(parents) <= set(classes) else None
        return PreparedData(dls=learn.dls, source=f"sample {sample}", details={
            "files": files, "sample_images": len(files), "targets": targets})

    # ----- model and training -----------------------------------------------------------------
    def build_learner(self, data: PreparedData, options: ClassifierOptions, pretrained: str | None = None) -> BuiltLearner:
        from fastai.vision.all import accuracy, vision_learner

        weights, note = imagenet_weights(options.arch, pretrained or options.pretrained)
        learn = vision_learner(
            data.dls, torchvision_arch(options.arch), normalize=False, pretrained=weights is not None, weights=weights,
            metrics=accuracy, concat_pool=options.head_pool == "concat", lin_ftrs=head_sizes(options.head_layers),
            ps=options.head_dropout, first_bn=options.head_bn,
            splitter=per_block_splitter if options.splitter == "per-block" else None,
        )
        if not options.head_bn:
            learn.model[1] = without_batchnorm(learn.model[1])
        return BuiltLearner(learn, options, weights is not None, note)

    def learning_rates(self, built: BuiltLearner, lr: float):
        """One rate for fastai's default groups; with one group per block, rates spread from lr/100 (stem)
        to lr (head), as fastai spreads a slice."""
        return slice(lr / 100, lr) if built.options.splitter == "per-block" else lr

    def pretrained_schedule(self, built: BuiltLearner, history: TrainingHistory) -> tuple[str, str]:
        epochs, lr = built.options.epochs or self.book_epochs, built.options.lr or 2e-3
        schedule, reason = f"book: fine_tune({epochs}, {lr:g})", "the body starts from ImageNet weights"
        click.echo(f"schedule: {schedule} ({reason})")
        history.fit("fine_tune", lambda: built.learn.fine_tune(epochs, lr))
        return schedule, reason

    def train(self, built: BuiltLearner, data: PreparedData):
        learn, options = built.learn, built.options
        if built.pretrained:
            summary = super().train(built, data)
        else:
            history = TrainingHistory(learn)
            epochs, lr = options.epochs or self.scratch_epochs, options.lr or self.scratch_lr
            rates = self.learning_rates(built, lr)
            shown = f"slice({rates.start:g}, {rates.stop:g})" if isinstance(rates, slice) else f"{rates:g}"
            schedule = f"from scratch: fit_one_cycle({epochs}, {shown}) on all layers ({options.splitter} splitter)"
            click.echo(f"schedule: {schedule} ({self.scratch_reason})")
            learn.unfreeze()
            history.fit("all layers", lambda: learn.fit_one_cycle(epochs, rates))
            summary = history.summary(schedule, self.scratch_reason)
        if options.tta:
            from fastai.vision.all import accuracy

            predictions, targets = learn.tta()
            summary.final_metrics["tta_accuracy"] = float(accuracy(predictions, targets))
            click.echo(f"      test-time augmentation accuracy {summary.final_metrics['tta_accuracy']:.4f} "
                       "(TTA is not exported: the served model is the plain forward pass)")
        return summary

    @classmethod
    def recognises(cls, learn) -> bool:
        """A `vision_learner` (body and pooling head), or a `Learner(dls, model)` over images and classes
        with a model of the user's own (`xresnet18(n_out=...)`, a torchvision or hand-written CNN)."""
        from fastai.layers import AdaptiveConcatPool2d
        from fastai.text.models.core import SequentialRNN
        from torch import nn

        model = learn.model
        if isinstance(model, nn.Sequential) and not isinstance(model, SequentialRNN) and len(model) == 2:
            pools = (AdaptiveConcatPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
            if any(isinstance(m, pools) for m in model[1].modules()):
                return True
        return image_in_target_out(learn)

    def refusal(self, learn) -> str | None:
        refusal = single_label_refusal(learn, self.name)
        if refusal is None:
            size = self.preprocessing(learn).model_size
            shape = self.output_shape(learn, size)
            if shape != (1, len(self.labels(learn))):
                return (f"this learner's model gives {shape} for one image at {size[0]}x{size[1]} (the size it was "
                        f"trained at); the classifier task serves one logit per class: (1, {len(self.labels(learn))})")
        return refusal

    def output_shape(self, learn, size: tuple[int, int]) -> tuple | str:
        """The shape of the model's output for one image of `size`, or what went wrong."""
        import torch

        channels = len(self.preprocessing(learn).color_mode)
        try:
            with torch.no_grad():
                output = learn.model.eval().cpu()(torch.zeros(1, channels, *size))
        except Exception as error:  # a model built for one size fails in its own ways at others
            return f"{type(error).__name__} ({message_line(error, 160)})"
        return tuple(output.shape) if isinstance(output, torch.Tensor) else f"a {type(output).__name__}"

    def takes_any_size(self, learn) -> bool:
        """Whether the model answers at the second size too (a pooling layer before the head makes it size
        independent; a hand-written CNN that flattens its last feature map is not)."""
        return self.output_shape(learn, self.second_size) == (1, len(self.labels(learn)))

    # ----- export -----------------------------------------------------------------------------
    def onnx_config_for(self, learn) -> OnnxConfig:
        """Height and width stay dynamic where the model takes any size; else they are fixed at the size it
        was trained at (the service resizes every upload to that size either way)."""
        if self.takes_any_size(learn):
            return self.onnx_config
        image = dataclasses.replace(self.onnx_config.inputs[0], dynamic_axes={0: "batch"})
        return dataclasses.replace(self.onnx_config, inputs=(image,))

    def exportable_module(self, learn):
        return learn.model.eval().cpu()

    def example_inputs(self, learn):
        import torch

        spec = self.preprocessing(learn)
        return (torch.randn(2, len(spec.color_mode), *spec.model_size, generator=torch.Generator().manual_seed(0)),)

    def evaluation_arrays(self, learn, data: PreparedData) -> tuple[np.ndarray, np.ndarray | None]:
        if "sample_images" in data.details:
            images = fastai_image_tensors(learn.dls, data.details["files"], self.preprocessing(learn).color_mode)
            return np.stack(images), data.details["targets"]
        images, targets = [], []
        for x, y in learn.dls.valid:
            images.append(x.cpu().float().numpy())
            targets.append(y.cpu().long().numpy())
        return np.concatenate(images), np.concatenate(targets)

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        import torch
        import torch.nn.functional as F

        images, targets = self.evaluation_arrays(learn, data)
        where = "sample" if "sample_images" in data.details else "valid"

        def part(n):
            return None if targets is None else targets[:n]

        cases = [ParityCase(f"{where} batch {n}", {"image": images[:n]}, part(n), f"first {n} {where} images")
                 for n in (1, 7) if n <= len(images)]
        cases.append(ParityCase(f"{where} all ({len(images)})", {"image": images}, targets, f"every {where} image"))
        if not self.takes_any_size(learn):
            return cases
        height, width = self.second_size
        resized = F.interpolate(torch.from_numpy(images[:16]), size=(height, width), mode="bilinear",
                                align_corners=False).numpy()
        cases.append(ParityCase(f"{where} images at {height}x{width}", {"image": resized}, part(16),
                                "real images resized to a second size (dynamic height/width)"))
        return cases

    def labels(self, learn) -> list[str]:
        return [str(label) for label in learn.dls.vocab]

    def preprocessing(self, learn):
        spec = image_preprocessing(learn.dls, batch_resizing=True, color_mode=color_mode_of(learn.model))
        if spec.resize_method == "none":
            raise PipelineError("this classifier's DataLoaders have no Resize or RandomResizedCrop item transform; the "
                                "service needs the size the model was trained at (add item_tfms=Resize(size))")
        return spec

    def preprocessing_probes(self, learn, data: PreparedData):
        return image_probes(learn.dls, data.details["files"], self.preprocessing(learn))
