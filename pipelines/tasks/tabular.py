"""Tabular: fastbook's `tabular_learner` with Categorify, FillMissing and Normalize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from export.config import OnnxConfig, ParityTolerance, TensorConfig
from export.parity import ParityCase
from export.quantize import QuantizationGate
from pipelines.data import download_book_dataset, read_table
from pipelines.errors import PipelineError
from pipelines.tasks.base import (
    BuiltLearner, PreparedData, PreprocessingProbe, Task, TaskOptions, option, single_label_refusal, valid_data_option,
)
from services.manifest import TabularPreprocessing
from services.tabular_preprocessing import encode_records

UNSEEN = "__a category never seen in training__"


def class_labels(values):
    """Class names as strings. Whole numbers read as floats (pandas does so for a column with an empty cell,
    whose rows are dropped before this) keep their integer spelling: `1`, not `1.0`."""
    import pandas as pd

    if pd.api.types.is_float_dtype(values) and values.notna().all() and (values == values.round()).all():
        values = values.astype("int64")
    return values.astype(str)


def dates_as_text(df):
    """Date and time columns (Parquet keeps their type) as ISO strings: the values a JSON client sends and the
    manifest can hold. Each value is then a class of its own, as a CSV's date column is."""
    import pandas as pd

    timed = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c]) or pd.api.types.is_timedelta64_dtype(df[c])
             or isinstance(df[c].dtype, (pd.PeriodDtype, pd.IntervalDtype))]
    if not timed:
        return df
    print(f"      read {', '.join(map(str, timed))} as text categories (one class per value; fastai's add_datepart "
          "would make features of dates)")
    return df.assign(**{c: df[c].astype(str).where(df[c].notna(), None) for c in timed})


def split_columns(df, target: str, cat_names, cont_names) -> tuple[list[str], list[str]]:
    """Columns from the options, else inferred: numbers are continuous, everything else categorical."""
    import pandas as pd

    missing = [c for c in [target, *(cat_names or []), *(cont_names or [])] if c not in df.columns]
    if missing:
        raise PipelineError(f"columns {missing} are not in the data (columns: {', '.join(map(str, df.columns))})")
    rest = [c for c in df.columns if c != target]
    if cat_names is None and cont_names is None:
        cont_names = [c for c in rest if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        cat_names = [c for c in rest if c not in cont_names]
    elif cat_names is None:
        cat_names = [c for c in rest if c not in cont_names]
    elif cont_names is None:
        cont_names = [c for c in rest if c not in cat_names]
    bad = [c for c in cont_names if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise PipelineError(f"continuous columns {bad} hold non-numbers; name them with --cat-names")
    return list(cat_names), list(cont_names)


def classes_seen_in_training(labels, is_valid: np.ndarray, items: str = "row") -> np.ndarray:
    """Which rows to keep: all but the validation rows whose class no training row has. fastai takes the
    classes from the training rows and fails on the others minutes in (a KeyError, or a target out of
    bounds); a rare class a random split put only in validation is one. Said in a line."""
    seen = set(labels[~is_valid])
    unseen = is_valid & ~labels.isin(seen).to_numpy()
    if unseen.any():
        classes = sorted(set(labels[unseen]), key=str)
        print(f"      left out {int(unseen.sum())} validation {items}(s) of class(es) no training {items} has: "
              f"{', '.join(map(repr, classes[:5]))}{', ...' if len(classes) > 5 else ''}")
    if unseen.any() and unseen.sum() == is_valid.sum():
        raise PipelineError(f"no validation {items} has a class that the training {items}s have")
    return ~unseen


def usable_continuous(df, training, cont_names: list[str], named: bool) -> list[str]:
    """Continuous columns fastai can fill and normalise. A column with no value in the training rows has no
    median to fill with and trains to NaN: an inferred one is left out with a line, a named one is an error.
    Infinite values make NaN too: an error either way."""
    empty = [c for c in cont_names if training[c].isna().all()]
    if empty and named:
        raise PipelineError(f"--cont-names: {', '.join(map(str, empty))} ha{'s' if len(empty) == 1 else 've'} no value "
                            "in the training rows (nothing to fill missing values with)")
    if empty:
        print(f"      left out {', '.join(map(str, empty))}: no value in the training rows")
    cont_names = [c for c in cont_names if c not in empty]
    infinite = [c for c in cont_names if np.isinf(df[c].to_numpy(dtype=np.float64, na_value=np.nan)).any()]
    if infinite:
        raise PipelineError(f"continuous column(s) {', '.join(map(str, infinite))} hold infinite values; replace "
                            "them, or leave those cells empty to have them filled as missing")
    return cont_names


def usable_categorical(training, cat_names: list[str], named: bool) -> list[str]:
    """Inferred categorical columns that tell rows apart (an id, a name, free text: a different value in
    nearly every training row) are left out with a line: every validation or served value would be one
    fastai never saw, and the manifest would list them all. Columns named with --cat-names stay."""
    if named:
        return cat_names
    identifiers = [c for c in cat_names
                   if len(values := training[c].dropna()) > 50 and values.nunique() > 0.9 * len(values)]
    if identifiers:
        print(f"      left out {', '.join(map(str, identifiers))}: a different value in nearly every training row (an "
              "identifier or free text, not a category); name it with --cat-names to keep it")
    return [c for c in cat_names if c not in identifiers]


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


@dataclass
class TabularOptions(TaskOptions):
    data: str = option("penguins", "'penguins' (embedded, offline: palmerpenguins' 344 penguins), 'adult_sample' "
                                   "(fastai's ADULT_SAMPLE via untar_data), or a CSV/TSV/Parquet file.")
    valid_data: Path | None = valid_data_option()
    target: str | None = option(None, "Target column [default: species for penguins, salary for adult, else the last column].")
    cat_names: str | None = option(None, "Comma-separated categorical columns [default: inferred].")
    cont_names: str | None = option(None, "Comma-separated continuous columns [default: inferred].")
    target_type: str = option("auto", "'auto': numbers with more than 20 distinct values are regression.",
                              choices=("auto", "classification", "regression"))
    layers: str = option("200,100", "Hidden layer sizes.")


def target_type_of(learn) -> str:
    """'classification' when fastai categorified the target (CategoryBlock: a vocabulary), else 'regression'."""
    try:
        return "classification" if learn.dls.vocab is not None and len(learn.dls.vocab) > 0 else "regression"
    except (AttributeError, TypeError):
        return "regression"


class TabularTask(Task):
    name = "tabular"
    summary = "JSON records in, a class or a value out (fastbook's tabular_learner)"
    Options = TabularOptions
    onnx_config = OnnxConfig(
        inputs=(TensorConfig("x_cat", "int64", {0: "batch"}), TensorConfig("x_cont", "float32", {0: "batch"})),
        outputs=(TensorConfig("output", "float32", {0: "batch"}),),
        opset=18,
        tolerance=ParityTolerance(logits_atol=1e-5, logits_rtol=1e-5, probability_atol=1e-5, preprocessing_atol=0.0),
        exporter="dynamo",
    )
    quantization_gate = QuantizationGate("dynamic", {"accuracy": 1.0, "rmse": 1.0}, min_agreement=0.99, min_speedup=1.2)
    sample_help = "a CSV/TSV/Parquet file of records with the learner's columns (the target column optional)"
    default_epochs = {"penguins": 20, "adult_sample": 3}
    scratch_lr = 1e-2
    scratch_reason = "tabular models train from scratch; one cycle as in the book"

    # ----- data -------------------------------------------------------------------------------
    def load_frames(self, options: TabularOptions):
        data = options.data
        if data == "penguins":
            import palmerpenguins

            return palmerpenguins.load_penguins(), "species", "penguins (palmerpenguins, embedded)"
        if data == "adult_sample":
            import pandas as pd
            from fastai.data.external import URLs

            path = download_book_dataset(URLs.ADULT_SAMPLE, "ADULT_SAMPLE", "--data penguins or --data FILE.csv")
            return pd.read_csv(path / "adult.csv"), "salary", f"ADULT_SAMPLE ({path})"
        path = Path(data).expanduser()
        df = read_table(path, expected="'penguins', 'adult_sample' or a CSV/TSV/Parquet file")
        return df, df.columns[-1], f"file {path}"

    def prepare_data(self, options: TabularOptions) -> PreparedData:
        import pandas as pd
        from fastai.tabular.all import (
            Categorify, CategoryBlock, FillMissing, Normalize, RandomSplitter, RegressionBlock, TabularDataLoaders,
        )

        df, default_target, source = self.load_frames(options)
        target = options.target or default_target
        if target not in df.columns:
            raise PipelineError(f"--target {target!r} is not a column of {source}")
        df = df[df[target].notna()].reset_index(drop=True)
        if len(df) < 10:
            raise PipelineError(f"{source}: {len(df)} rows with a target; too few to train")
        valid_idx = None
        if options.valid_data:
            valid = read_table(Path(options.valid_data), "--valid-data")
            valid = valid[valid[target].notna()] if target in valid.columns else valid
            if list(valid.columns) != list(df.columns):
                raise PipelineError(f"--valid-data has columns {list(valid.columns)}, --data has {list(df.columns)}")
            valid_idx = list(range(len(df), len(df) + len(valid)))
            df = pd.concat([df, valid], ignore_index=True)
            source += f", validation {options.valid_data}"
        df = dates_as_text(df)
        cat_names, cont_names = split_columns(df, target, _names(options.cat_names), _names(options.cont_names))
        if valid_idx is None:
            valid_idx = list(RandomSplitter(valid_pct=0.2, seed=options.seed)(list(range(len(df))))[1])
        cont_names = usable_continuous(df, df.drop(index=valid_idx), cont_names, named=options.cont_names is not None)
        cat_names = usable_categorical(df.drop(index=valid_idx), cat_names, named=options.cat_names is not None)
        if not cat_names and not cont_names:
            raise PipelineError(f"{source}: no column is left to learn {target!r} from; name them with --cat-names "
                                "and --cont-names")
        column_counts = {"categorical": len(cat_names), "continuous": len(cont_names)}
        target_type = options.target_type
        if target_type == "auto":
            numeric = pd.api.types.is_numeric_dtype(df[target]) and not pd.api.types.is_bool_dtype(df[target])
            target_type = "regression" if numeric and df[target].nunique() > 20 else "classification"
        if target_type == "regression":
            df[target] = df[target].astype("float32")
            if not np.isfinite(df[target]).all():
                raise PipelineError(f"--target {target!r}: {int((~np.isfinite(df[target])).sum())} value(s) are "
                                    "infinite or beyond float32; a regression target must be finite")
        else:
            df[target] = class_labels(df[target])
            is_valid = np.isin(np.arange(len(df)), valid_idx)
            keep = classes_seen_in_training(df[target], is_valid)
            position = np.cumsum(keep) - 1  # each kept row's index once the others are gone; valid_idx keeps its order
            df, valid_idx = df[keep].reset_index(drop=True), [int(position[i]) for i in valid_idx if keep[i]]
        dls = TabularDataLoaders.from_df(
            # copies: fastai appends its `_na` indicator columns to the lists it is given
            df, procs=[Categorify, FillMissing, Normalize], cat_names=list(cat_names), cont_names=list(cont_names),
            y_names=target, y_block=CategoryBlock() if target_type == "classification" else RegressionBlock(),
            valid_idx=valid_idx, bs=options.batch_size,
        )
        raw_valid = df.iloc[valid_idx].reset_index(drop=True)
        return PreparedData(
            dls=dls, source=source,
            details={"rows": len(df), "train_rows": len(df) - len(valid_idx), "valid_rows": len(valid_idx),
                     "target": target, "target_type": target_type, **column_counts, "raw_valid": raw_valid},
        )

    def sample_data(self, learn, sample: Path) -> PreparedData:
        sample = Path(sample).expanduser()
        if not sample.is_file():
            raise PipelineError(f"--sample {sample}: no such file (expected {self.sample_help})")
        frame = read_table(sample, "--sample", self.sample_help)
        spec = self.preprocessing(learn)
        missing = [c for c in [*spec.cat_names, *spec.cont_names] if c not in frame.columns]
        if missing:
            raise PipelineError(f"--sample {sample}: lacks the learner's column(s) {', '.join(map(str, missing))} "
                                f"(it has {', '.join(map(str, frame.columns))})")
        if frame.empty:
            raise PipelineError(f"--sample {sample}: no records in it")
        unfilled = [c for c in spec.cont_names if c not in spec.fill_values and frame[c].isna().any()]
        if unfilled:
            without_values = frame[unfilled].isna().any(axis=1)
            click.echo(f"      left out {int(without_values.sum())} sample row(s) with no value in "
                       f"{', '.join(unfilled)}: this learner has no FillMissing for those columns, so fastai computes NaN for such rows "
                       "and the service refuses them (400)")
            frame = frame[~without_values]
            if frame.empty:
                raise PipelineError(f"--sample {sample}: every record lacks a value in {', '.join(unfilled)}")
        return PreparedData(dls=learn.dls, source=f"sample {sample}", details={
            "sample_rows": len(frame), "target": spec.target, "raw_valid": frame.reset_index(drop=True)})

    # ----- model and training -----------------------------------------------------------------
    def build_learner(self, data: PreparedData, options: TabularOptions, pretrained: str | None = None) -> BuiltLearner:
        from fastai.tabular.all import accuracy, rmse, tabular_learner

        try:
            layers = [int(size) for size in options.layers.split(",")]
        except ValueError:
            raise PipelineError(f"--layers {options.layers!r}: expected sizes like 200,100") from None
        metric = accuracy if data.details["target_type"] == "classification" else rmse
        learn = tabular_learner(data.dls, layers=layers, metrics=metric)
        return BuiltLearner(learn, options, False, "tabular models have no pretrained weights")

    def train(self, built: BuiltLearner, data: PreparedData):
        epochs = built.options.epochs or self.default_epochs.get(built.options.data, 5)
        return super().train(built.with_options(epochs=epochs), data)

    @classmethod
    def recognises(cls, learn) -> bool:
        from fastai.tabular.model import TabularModel

        return isinstance(learn.model, TabularModel)

    def refusal(self, learn) -> str | None:
        refusal = single_label_refusal(learn, self.name, regression_served=True)
        if refusal is None and len(learn.dls.y_names) > 1:
            return (f"this tabular learner predicts {len(learn.dls.y_names)} targets at once "
                    f"({', '.join(learn.dls.y_names)}); the tabular task serves one target per record; "
                    "learners with several targets are not supported yet")
        return refusal

    # ----- export -----------------------------------------------------------------------------
    def exportable_module(self, learn):
        return learn.model.eval().cpu()

    @staticmethod
    def model_inputs(dls, batch):
        """(x_cat, x_cont) of a fastai batch; fastai leaves x_cont out when there are no continuous columns."""
        import torch

        x_cat = batch[0].cpu().long()
        x_cont = batch[1].cpu().float() if dls.n_inp == 2 else torch.zeros((len(x_cat), 0))
        return x_cat, x_cont

    def example_inputs(self, learn):
        import torch

        return torch.zeros((2, len(learn.dls.cat_names)), dtype=torch.int64), torch.zeros((2, len(learn.dls.cont_names)))

    def fastai_tensors(self, dls, frame) -> tuple[np.ndarray, np.ndarray]:
        """fastai's own tensors for raw rows, through `dls.test_dl` (the path of `learn.get_preds`)."""
        import torch

        pairs = [self.model_inputs(dls, batch) for batch in dls.test_dl(frame, bs=max(1, len(frame)))]
        return torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy()

    def awkward_rows(self, learn, frame):
        """Validation rows with unseen categories and missing values, where fastai can fill them."""
        rows = frame.head(7).copy()
        for position, column in enumerate(learn.dls.cat_names):
            if column in rows.columns and not column.endswith("_na"):
                rows[column] = rows[column].astype(object)  # a bool or integer column cannot hold the unseen string
                rows.loc[rows.index[position % len(rows)], column] = UNSEEN
                rows.loc[rows.index[(position + 3) % len(rows)], column] = None
        for column in self.preprocessing(learn).fill_values:
            rows.loc[rows.index[1], column] = np.nan
        return rows

    def raw_frames(self, learn, data: PreparedData) -> dict[str, object]:
        frame = data.details["raw_valid"]
        return {"first row": frame.head(1), "first 7 rows": frame.head(7),
                f"{'sample' if 'sample_rows' in data.details else 'validation set'} ({len(frame)})": frame, "unseen categories and missing values": self.awkward_rows(learn, frame)}

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        frames = self.raw_frames(learn, data)
        target = data.details["target"]
        metrics = ("accuracy",) if target_type_of(learn) == "classification" else ("rmse",)
        vocab = [str(v) for v in learn.dls.vocab] if target_type_of(learn) == "classification" else None
        cases = []
        for name, frame in frames.items():
            x_cat, x_cont = self.fastai_tensors(learn.dls, frame)
            targets = None
            if target in frame.columns and frame[target].notna().all():
                values = frame[target].to_numpy()
                if vocab is None:
                    targets = values.astype(np.float64)
                elif {str(v) for v in values} <= set(vocab):
                    targets = np.array([vocab.index(str(v)) for v in values])
            cases.append(ParityCase(name, {"x_cat": x_cat, "x_cont": x_cont}, targets, f"{len(frame)} raw rows", metrics))
        return cases

    def labels(self, learn) -> list[str]:
        return [str(v) for v in learn.dls.vocab] if target_type_of(learn) == "classification" else [learn.dls.y_names[0]]

    def preprocessing(self, learn) -> TabularPreprocessing:
        procs = learn.dls.train_ds.procs
        # A learner may be trained without FillMissing (no missing values) or Normalize; then nothing is
        # filled (a missing value is a 400, as fastai would compute NaN) and the columns go in as they are.
        categorify, fill, normalize = (getattr(procs, name, None)
                                       for name in ("categorify", "fill_missing", "normalize"))
        x_cat_columns = list(learn.dls.cat_names)
        if x_cat_columns and categorify is None:
            raise PipelineError(f"this tabular learner has categorical columns ({', '.join(x_cat_columns)}) but no "
                                "Categorify in its procs; the service needs Categorify's classes to encode them")
        fill_values = {c: float(v) for c, v in fill.na_dict.items()} if fill is not None else {}
        cont_names = list(learn.dls.cont_names)
        return TabularPreprocessing(
            cat_names=[c for c in x_cat_columns if not (c.endswith("_na") and c[:-3] in fill_values)],
            cont_names=cont_names,
            x_cat_columns=x_cat_columns,
            categories={c: [_plain(v) for v in categorify.classes[c]] for c in x_cat_columns},
            fill_values=fill_values,
            means={c: float(normalize.means[c]) if normalize is not None else 0.0 for c in cont_names},
            stds={c: float(normalize.stds[c]) if normalize is not None else 1.0 for c in cont_names},
            target=learn.dls.y_names[0],
            target_type=target_type_of(learn),
        )

    def preprocessing_probes(self, learn, data: PreparedData):
        spec = self.preprocessing(learn)
        for name, frame in self.raw_frames(learn, data).items():
            expected_cat, expected_cont = self.fastai_tensors(learn.dls, frame)
            served_cat, served_cont = encode_records(frame_to_records(frame), spec)
            yield PreprocessingProbe(f"{name}: categories", served_cat, expected_cat)
            yield PreprocessingProbe(f"{name}: continuous", served_cont, expected_cont)


def _plain(value):
    """numpy scalars to JSON-able Python values (category classes go into the manifest)."""
    return value.item() if hasattr(value, "item") else value


def frame_to_records(frame) -> list[dict]:
    """Rows as a client would send them: JSON values, None for missing."""
    import pandas as pd

    return [{k: (None if (not isinstance(v, str) and pd.isna(v)) else _plain(v)) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]
