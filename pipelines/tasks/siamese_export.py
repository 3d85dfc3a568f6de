"""The Siamese model rewritten for export: one encoder pass over both images.

fastai's `SiameseModel` runs the encoder twice, once per image, which in ONNX Runtime reads the
encoder's weights twice per pair. Here both images are stacked on the batch axis, encoded in one pass
and split again before the head: the same arithmetic per image (batch norm in eval mode is per sample),
half the weight reads. Both images of a pair must have the same size, which the service's resize makes.
"""

import torch
from torch import nn


class OnePassSiamese(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder, self.head = model.encoder, model.head

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        count = image_a.shape[0]
        features = self.encoder(torch.cat([image_a, image_b], dim=0))
        return self.head(torch.cat([features[:count], features[count:]], dim=1))
