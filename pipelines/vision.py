"""Shared pieces of the image tasks: architectures and ImageNet weights when they can be had."""

from __future__ import annotations

import click

from pipelines.errors import PipelineError

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")


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
