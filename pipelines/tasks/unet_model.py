"""fastai's DynamicUnet made exportable at any input size, and the pixel-accuracy metric.

fastai's `UnetBlock` and `ResizeToOrig` decide in Python whether to interpolate (`if ssh != up_out.shape`);
tracing freezes that decision at the export size, and the exported graph fails in ONNX Runtime at sizes
that are not multiples of 32 (`Concat ... dimensions must match`). `ExportableDynamicUnet` runs the same
modules with the same weights but always interpolates; nearest-neighbour interpolation to the same size
is the identity, so at every size where fastai does not interpolate the output is bit-identical, and
where it does, the graph now does too. `SequentialEx`'s tensor attribute `x.orig` (the model input) is
passed explicitly, and the final `ToTensorBase` (a type cast that breaks the dynamo exporter) is left out.
"""

import torch
import torch.nn.functional as F
from fastai.layers import MergeLayer, ToTensorBase
from fastai.vision.models.unet import DynamicUnet, ResizeToOrig, UnetBlock


def pixel_accuracy(inp, targ):
    return (inp.argmax(dim=1) == targ).float().mean()


def unet_block_forward(block: UnetBlock, up_in: torch.Tensor) -> torch.Tensor:
    skip = block.hook.stored
    up_out = F.interpolate(block.shuf(up_in), skip.shape[-2:], mode="nearest")
    cat_x = block.relu(torch.cat([up_out, block.bn(skip)], dim=1))
    return block.conv2(block.conv1(cat_x))


class ExportableDynamicUnet(torch.nn.Module):
    def __init__(self, unet: DynamicUnet):
        super().__init__()
        self.layers = torch.nn.ModuleList(layer for layer in unet.layers if not isinstance(layer, ToTensorBase))

    def forward(self, x):
        result = x
        for layer in self.layers:
            if isinstance(layer, UnetBlock):
                result = unet_block_forward(layer, result)
            elif isinstance(layer, ResizeToOrig):
                result = F.interpolate(result, x.shape[-2:], mode=layer.mode)
            elif isinstance(layer, MergeLayer):
                result = torch.cat([result, x], dim=1) if layer.dense else result + x
            else:
                result = layer(result)
        return result
