"""Learners of a recognised model whose targets the tasks do not serve, untrained (what they predict is in
their DataLoaders and loss, not their weights): a vision_learner for several labels per image
(MultiCategoryBlock) and one for numbers (RegressionBlock), a unet_learner that predicts images
(super-resolution's ImageBlock target), a tabular_learner for two labels and one for two numbers; and a
unet_learner over `MaskBlock()` without codes, which is served (classes named by number).
Run: python unserved_targets.py IMAGES OUT

Writes OUT/vision_multi_label.pkl, OUT/vision_regression.pkl, OUT/unet_image_to_image.pkl,
OUT/tabular_multi_label.pkl, OUT/tabular_two_targets.pkl and OUT/unet_no_codes.pkl."""

import sys
from pathlib import Path

import palmerpenguins
from fastai.tabular.all import *
from fastai.vision.all import *

images, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
files = get_image_files(images)[:40]


def digit_and_parity(path):
    digit = path.name.rsplit("_", 1)[0]
    return [digit, "even"] if digit in ("zero", "two", "four", "six", "eight") else [digit]


def name_length(path):
    return tensor([float(len(path.name)), 1.0])


for name, block, get_y, extra in (("vision_multi_label", MultiCategoryBlock, digit_and_parity, {}),
                                  ("vision_regression", RegressionBlock(n_out=2), name_length, {"y_range": (0, 20)})):
    dls = DataBlock(blocks=(ImageBlock, block), get_y=get_y, item_tfms=Resize(32)).dataloaders(files, bs=8)
    vision_learner(dls, resnet18, pretrained=False, **extra).export(out / f"{name}.pkl")

images_out = DataBlock(blocks=(ImageBlock, ImageBlock), get_y=noop, item_tfms=Resize(32)).dataloaders(files, bs=8)
unet_learner(images_out, resnet18, pretrained=False, n_out=3, loss_func=MSELossFlat()).export(out / "unet_image_to_image.pkl")
masks = DataBlock(blocks=(ImageBlock, MaskBlock()), get_y=noop, item_tfms=Resize(32)).dataloaders(files, bs=8)
unet_learner(masks, resnet18, pretrained=False, n_out=3).export(out / "unet_no_codes.pkl")

df = palmerpenguins.load_penguins().dropna().reset_index(drop=True)
df["heavy"], df["long"] = (df.body_mass_g > 4000).astype(int), (df.bill_length_mm > 44).astype(int)
for name, y_names, block in (("tabular_multi_label", ["heavy", "long"], MultiCategoryBlock(encoded=True, vocab=["heavy", "long"])),
                             ("tabular_two_targets", ["bill_length_mm", "body_mass_g"], RegressionBlock(n_out=2))):
    dls = TabularDataLoaders.from_df(df, y_names=y_names, y_block=block, cat_names=["island"],
                                     cont_names=["flipper_length_mm"], procs=[Categorify, Normalize])
    tabular_learner(dls, layers=[8]).export(out / f"{name}.pkl")
