"""A `vision_learner` on a timm model, as fastai's docs recommend (`vision_learner(dls, 'convnext_tiny')`;
here timm's small MobileNetV3, untrained weights, one epoch). Run: python classifier_timm.py IMAGES OUT

Writes OUT/export.pkl and OUT/sample/<class>/ (images in class folders)."""

import shutil
import sys
from pathlib import Path

from fastai.vision.all import *

path, out = Path(sys.argv[1]), Path(sys.argv[2]).resolve()


def label_func(name):
    return name.rsplit("_", 1)[0]


set_seed(0, reproducible=True)
files = get_image_files(path)
dls = ImageDataLoaders.from_name_func(path, files, label_func, valid_pct=0.2, seed=42, item_tfms=Resize(64),
                                      batch_tfms=aug_transforms(size=48, do_flip=False), bs=32)
learn = vision_learner(dls, "mobilenetv3_small_100", pretrained=False, metrics=accuracy)
learn.fit_one_cycle(1, 3e-3)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")
for image in files[:8]:
    (out / "sample" / label_func(image.name)).mkdir(parents=True, exist_ok=True)
    shutil.copy2(image, out / "sample" / label_func(image.name) / image.name)
