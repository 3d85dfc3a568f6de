"""A fastai user's tabular model: `tabular_learner` with Categorify, FillMissing and Normalize as in the
book, trained for seconds, then `learn.export()`. Run: python tabular_user.py OUT

Writes OUT/export.pkl, OUT/records.csv (the sample) and OUT/expected.json (learn.predict's probabilities)."""

import json
import sys
from pathlib import Path

import palmerpenguins
from fastai.tabular.all import *

out = Path(sys.argv[1])
df = palmerpenguins.load_penguins()
set_seed(0, reproducible=True)
dls = TabularDataLoaders.from_df(df, y_names="species", cat_names=["island", "sex"],
                                 cont_names=["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"],
                                 procs=[Categorify, FillMissing, Normalize], valid_idx=list(range(0, len(df), 5)), bs=64)
learn = tabular_learner(dls, layers=[50, 20], metrics=accuracy)
learn.fit_one_cycle(2, 1e-2)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")
sample = df.iloc[list(range(0, len(df), 17))].reset_index(drop=True)
sample.to_csv(out / "records.csv", index=False)
expected = [learn.predict(row)[2].tolist() for _, row in sample.iterrows()]
(out / "expected.json").write_text(json.dumps({"labels": [str(v) for v in learn.dls.vocab], "probabilities": expected}))
