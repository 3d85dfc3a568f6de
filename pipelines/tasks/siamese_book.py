"""The book's Siamese classes (fastbook, "Application Architectures Deep Dive"), nearly verbatim.

Imported lazily by pipelines.tasks.siamese: importing fastai takes several seconds. No
`from __future__ import annotations` here: fastcore dispatches `encodes` on real annotations.
"""

import random
import re
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import L, CrossEntropyLossFlat, Module, PILImage, Transform, fastuple, params, show_image


class SiameseImage(fastuple):
    def show(self, ctx=None, **kwargs):
        if len(self) > 2:
            img1, img2, same_breed = self
        else:
            img1, img2 = self
            same_breed = "Undetermined"
        if not isinstance(img1, torch.Tensor):
            if img2.size != img1.size:
                img2 = img2.resize(img1.size)
            t1, t2 = torch.tensor(np.asarray(img1)), torch.tensor(np.asarray(img2))
            t1, t2 = t1.permute(2, 0, 1), t2.permute(2, 0, 1)
        else:
            t1, t2 = img1, img2
        line = t1.new_zeros(t1.shape[0], t1.shape[1], 10)
        return show_image(torch.cat([t1, line, t2], dim=2), title=same_breed, ctx=ctx, **kwargs)


class ImagePair:
    """Two image files to compare at inference time (in training the transform draws the partner)."""

    def __init__(self, first, second):
        self.first, self.second = Path(first), Path(second)

    def __repr__(self):
        return f"ImagePair({self.first.name}, {self.second.name})"


class SiameseTransform(Transform):
    def __init__(self, files, splits, label_func):
        self.label_func = label_func
        self.labels = sorted({label_func(f) for f in files})
        self.splbl2files = [
            {l: [f for f in files[splits[i]] if label_func(f) == l] for l in self.labels} for i in range(2)
        ]
        self.valid = {f: self._draw(f, 1) for f in files[splits[1]]}

    def encodes(self, f: Path):
        f2, same = self.valid.get(f, self._draw(f, 0))
        img1, img2 = PILImage.create(f), PILImage.create(f2)
        return SiameseImage(img1, img2, same)

    def encodes(self, pair: ImagePair):  # noqa: F811 (fastcore dispatches on the annotation)
        return SiameseImage(PILImage.create(pair.first), PILImage.create(pair.second))

    def _draw(self, f, split=0):
        same = random.random() < 0.5
        cls = self.label_func(f)
        if not same:
            cls = random.choice(L(l for l in self.labels if l != cls))
        return random.choice(self.splbl2files[split][cls]), same


class SiameseModel(Module):
    def __init__(self, encoder, head):
        self.encoder, self.head = encoder, head

    def forward(self, x1, x2):
        ftrs = torch.cat([self.encoder(x1), self.encoder(x2)], dim=1)
        return self.head(ftrs)


class SiameseLoss(CrossEntropyLossFlat):
    """The book's `nn.CrossEntropyLoss()(out, targ.long())`; as a fastai loss it also gives
    `get_preds` its softmax activation."""

    def __call__(self, inp, targ, **kwargs):
        return super().__call__(inp, targ.long(), **kwargs)


def siamese_splitter(model):
    return [params(model.encoder), params(model.head)]


def label_func(fname):
    return re.match(r"^(.*)_\d+.jpg$", fname.name).groups()[0]


def loss_func(out, targ):
    return CrossEntropyLossFlat()(out, targ.long())


# What a notebook that follows the book defines in `__main__`, and so what its `learn.export()` pickle
# refers to as `__main__.<name>`.
NOTEBOOK_NAMES = ("SiameseImage", "SiameseTransform", "SiameseModel", "loss_func", "siamese_splitter", "label_func")
