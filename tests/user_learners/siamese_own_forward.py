"""A Siamese model whose forward is not the book's: the head sees the encodings' absolute difference (512
features), not both concatenated (1024), a common way to compare two images. Defined in `__main__` as a
notebook defines it; untrained (what matters is the forward). Run: python siamese_own_forward.py DIGITS OUT

Writes OUT/export.pkl (fastai's `learn.export()` pickles with cloudpickle, which carries `__main__`'s
classes by value, forward included) and OUT/pairs.csv (the sample)."""

import sys
from pathlib import Path

from fastai.vision.all import *

path, out = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
out.mkdir(parents=True, exist_ok=True)


class SiameseModel(Module):
    def __init__(self, encoder, head):
        self.encoder, self.head = encoder, head

    def forward(self, x1, x2):
        return self.head(torch.abs(self.encoder(x1) - self.encoder(x2)))


def label_func(name):
    return name.rsplit("_", 1)[0]


set_seed(0, reproducible=True)
files = get_image_files(path)[:40]
dls = ImageDataLoaders.from_name_func(path, files, label_func, item_tfms=Resize(32),
                                      batch_tfms=Normalize.from_stats(*imagenet_stats), bs=8)
learn = Learner(dls, SiameseModel(create_body(resnet18(), cut=-2), create_head(512, 2, ps=0.5)),
                loss_func=CrossEntropyLossFlat())
learn.export(out / "export.pkl")
(out / "pairs.csv").write_text("image_a,image_b\n" + "".join(f"{a},{b}\n" for a, b in zip(files[0:8:2], files[1:8:2])))
