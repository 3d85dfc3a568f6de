"""A tabular_learner trained without FillMissing and without Normalize (`procs=[Categorify]`: a user whose
columns need neither), trained for seconds, then `learn.export()`. Run: python tabular_bare_procs.py OUT

Writes OUT/export.pkl and OUT/records.csv (the sample: raw penguins rows, one of them without a bill length)."""

import sys
from pathlib import Path

import palmerpenguins
from fastai.tabular.all import *

out = Path(sys.argv[1])
df = palmerpenguins.load_penguins()
set_seed(0, reproducible=True)
complete = df.dropna(subset=["bill_length_mm", "flipper_length_mm"])
dls = TabularDataLoaders.from_df(complete, y_names="species", cat_names=["island", "sex"],
                                 cont_names=["bill_length_mm", "flipper_length_mm"], procs=[Categorify],
                                 valid_idx=list(range(0, len(complete), 5)), bs=64)
learn = tabular_learner(dls, layers=[20], metrics=accuracy)
learn.fit_one_cycle(1, 1e-2)
out.mkdir(parents=True, exist_ok=True)
learn.export(out / "export.pkl")
sample = df.iloc[[3, *range(2, len(df), 9)]]
assert sample.bill_length_mm.isna().sum() == 1
sample.to_csv(out / "records.csv", index=False)
