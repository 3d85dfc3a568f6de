"""A fastai user's image classifier, as the chapter's first model: `vision_learner` over
`ImageDataLoaders.from_name_func` with a label function of the notebook, trained for seconds, then
`learn.export()`. Run: python classifier_user.py IMAGES OUT

Writes OUT/export.pkl, OUT/sample/<class>/ (images in class folders) and OUT/expected.json
(learn.predict's probabilities of each sample image)."""

import sys
from pathlib import Path

from classifier_sample import write_sample
from fastai.vision.all import *

path, out = Path(sys.argv[1]), Path(sys.argv[2])


def label_func(name):  # from_name_func passes the file name, as the book's is_cat(x) gets it
    return name.rsplit("_", 1)[0]


set_seed(0, reproducible=True)
files = get_image_files(path)
dls = ImageDataLoaders.from_name_func(path, files, label_func, valid_pct=0.2, seed=42, item_tfms=Resize(32),
                                      batch_tfms=[*aug_transforms(do_flip=False), Normalize.from_stats(*imagenet_stats)],
                                      bs=32)
# the book: vision_learner(dls, resnet34, metrics=error_rate) with ImageNet weights, then fine_tune(1)
learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy, lin_ftrs=[128], ps=0.25)
learn.fit_one_cycle(1, 2e-3)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")
write_sample(learn, files[:6], label_func, out)
