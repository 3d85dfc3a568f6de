"""A fastai user's segmentation model: `unet_learner` as in the book's CamVid example, trained for
seconds on a folder in CamVid's layout, then `learn.export()`. Run: python unet_user.py SCENES OUT

Writes OUT/export.pkl, OUT/sample/ (images) and OUT/expected.json (learn.predict's mask of each)."""

import json
import shutil
import sys
from pathlib import Path

from fastai.vision.all import *

path, out = Path(sys.argv[1]), Path(sys.argv[2])
codes = np.loadtxt(path / "codes.txt", dtype=str)


def label_func(o):
    return path / "labels" / f"{o.stem}_P{o.suffix}"


set_seed(0, reproducible=True)
fnames = get_image_files(path / "images")
dls = SegmentationDataLoaders.from_label_func(path, bs=8, fnames=fnames, label_func=label_func, codes=codes,
                                              batch_tfms=[Normalize.from_stats(*imagenet_stats)])
learn = unet_learner(dls, resnet18, pretrained=False)  # the book: resnet34 with ImageNet weights
learn.fit_one_cycle(1, 3e-3)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")
(out / "sample").mkdir(exist_ok=True)
masks = {}
for image in fnames[:3]:
    shutil.copy2(image, out / "sample" / image.name)
    masks[image.name] = learn.predict(image)[0].numpy().astype(int).tolist()
(out / "expected.json").write_text(json.dumps(masks))
