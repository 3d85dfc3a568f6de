"""Image classifiers built as the book's chapters 13 and 14 build them: `Learner(dls, model)` with a model
of the user's own instead of `vision_learner`. Run: python classifier_own_models.py IMAGES OUT

- OUT/xresnet/: fastai's `xresnet18(n_out=...)`, pooled before its head, so it takes any image size;
- OUT/simple_cnn/: the book's `simple_cnn` (stride-2 convolutions down to 1x1, then Flatten), which answers
  only at the 28x28 it was trained at;
- OUT/wrong_outputs.pkl: `xresnet18()` left at its 1000 ImageNet outputs for 10 digits (untrained).

Each folder has export.pkl, sample/<class>/ (images in class folders) and expected.json (learn.predict's
probabilities of each sample image)."""

import sys
from pathlib import Path

from classifier_sample import write_sample
from fastai.vision.all import *

path, out = Path(sys.argv[1]), Path(sys.argv[2])


def label_func(name):
    return name.rsplit("_", 1)[0]


def conv(ni, nf, ks=3, act=True):  # the book's chapter 13
    layers = [nn.Conv2d(ni, nf, stride=2, kernel_size=ks, padding=ks // 2), nn.BatchNorm2d(nf)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


set_seed(0, reproducible=True)
files = get_image_files(path)
dls = ImageDataLoaders.from_name_func(path, files, label_func, valid_pct=0.2, seed=42, item_tfms=Resize(28),
                                      batch_tfms=Normalize.from_stats(*imagenet_stats), bs=32)
classes = len(dls.vocab)
models = {
    "xresnet": xresnet18(n_out=classes),
    "simple_cnn": nn.Sequential(conv(3, 8, ks=5), conv(8, 16), conv(16, 32), conv(32, 64),
                                conv(64, classes, act=False), Flatten()),
}
for name, model in models.items():
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    learn.fit_one_cycle(1, 3e-3)
    folder = (out / name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    learn.export(folder / "export.pkl")
    write_sample(learn, files[:8], label_func, folder)
Learner(dls, xresnet18(), loss_func=CrossEntropyLossFlat()).export(out.resolve() / "wrong_outputs.pkl")
