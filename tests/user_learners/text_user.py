"""A fastai user's text classifier: `text_classifier_learner` with AWD_LSTM as in the book, trained for
seconds, then `learn.export()`. Run: python text_user.py REVIEWS.csv OUT

Writes OUT/export.pkl, OUT/texts.txt (the sample, one text a line) and OUT/expected.json
(learn.predict's probabilities of each text)."""

import json
import sys
from pathlib import Path

import pandas as pd
from fastai.text.all import *

data, out = Path(sys.argv[1]), Path(sys.argv[2])
df = pd.read_csv(data)
set_seed(0, reproducible=True)
dls = TextDataLoaders.from_df(df, text_col="text", label_col="label", valid_pct=0.2, bs=32, seq_len=72)
# the book: pretrained WikiText-103 weights (AWD_LSTM's full size); offline, a small one from scratch
learn = text_classifier_learner(dls, AWD_LSTM, drop_mult=0.3, pretrained=False,
                                config=dict(emb_sz=64, n_hid=128, n_layers=2), metrics=accuracy)
learn.fit_one_cycle(1, 5e-3)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")
texts = [t.replace("\n", " ") for t in df["text"].head(6)] + ["Short one.", "An unseen word: zyxwvut!"]
(out / "texts.txt").write_text("\n".join(texts) + "\n")
expected = {text: learn.predict(text)[2].tolist() for text in texts}
(out / "expected.json").write_text(json.dumps({"labels": [str(v) for v in learn.dls.vocab[1]], "probabilities": expected}))
