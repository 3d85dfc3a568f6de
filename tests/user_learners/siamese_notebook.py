"""A fastai user's Siamese model, written as the book's notebook writes it: every class and function in
`__main__`, trained for seconds, then `learn.export()`. Run as a script: python siamese_notebook.py DIGITS OUT

Writes OUT/export.pkl, OUT/pairs.csv (the sample) and OUT/expected.json (learn.predict on each pair)."""

import json
import random
import re
import sys
from pathlib import Path

from fastai.vision.all import *

path, out = Path(sys.argv[1]), Path(sys.argv[2])
files = get_image_files(path)


class SiameseImage(fastuple):
    def show(self, ctx=None, **kwargs):
        img1, img2, same_breed = self
        return show_image(torch.cat([img1, img2], dim=2), title=same_breed, ctx=ctx, **kwargs)


def label_func(fname):
    return re.match(r'^(.*)_\d+.jpg$', fname.name).groups()[0]


class SiameseTransform(Transform):
    def __init__(self, files, splits):
        self.splbl2files = [{l: [f for f in files[splits[i]] if label_func(f) == l] for l in labels}
                            for i in range(2)]
        self.valid = {f: self._draw(f, 1) for f in files[splits[1]]}

    def encodes(self, f):
        f2, same = self.valid.get(f, self._draw(f, 0))
        img1, img2 = PILImage.create(f), PILImage.create(f2)
        return SiameseImage(img1, img2, int(same))

    def _draw(self, f, split=0):
        same = random.random() < 0.5
        cls = label_func(f)
        if not same:
            cls = random.choice(L(l for l in labels if l != cls))
        return random.choice(self.splbl2files[split][cls]), same


class SiameseModel(Module):
    def __init__(self, encoder, head):
        self.encoder, self.head = encoder, head

    def forward(self, x1, x2):
        ftrs = torch.cat([self.encoder(x1), self.encoder(x2)], dim=1)
        return self.head(ftrs)


def loss_func(out, targ):
    return nn.CrossEntropyLoss()(out, targ.long())


def siamese_splitter(model):
    return [params(model.encoder), params(model.head)]


set_seed(0, reproducible=True)
labels = list(set(files.map(label_func)))
splits = RandomSplitter()(files)
tfm = SiameseTransform(files, splits)
tls = TfmdLists(files, tfm, splits=splits)
dls = tls.dataloaders(after_item=[Resize(32), ToTensor], after_batch=[IntToFloatTensor, Normalize.from_stats(*imagenet_stats)], bs=32)
encoder = create_body(resnet18(), cut=-2)  # the book: create_body(resnet34, cut=-2) with ImageNet weights
head = create_head(512 * 2, 2, ps=0.5)
model = SiameseModel(encoder, head)
learn = Learner(dls, model, loss_func=loss_func, splitter=siamese_splitter, metrics=accuracy)
learn.fit_one_cycle(1, 3e-3)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")

valid = [files[i] for i in splits[1][:8]]
pairs = list(zip(valid[0::2], valid[1::2]))
(out / "pairs.csv").write_text("image_a,image_b\n" + "".join(f"{a},{b}\n" for a, b in pairs))
expected = []
for a, b in pairs:
    # the book's way to predict on a raw pair: the model on the transformed images
    x1, x2 = (learn.dls.valid.after_batch(learn.dls.valid.after_item(PILImage.create(f))[None]) for f in (a, b))
    with torch.no_grad():
        expected.append(torch.softmax(learn.model.eval()(x1, x2), dim=1)[0].tolist())
(out / "expected.json").write_text(json.dumps({"files": [[str(a), str(b)] for a, b in pairs], "probabilities": expected}))
