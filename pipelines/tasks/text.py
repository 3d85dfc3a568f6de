"""Text classification: fastbook's `text_classifier_learner` with AWD_LSTM (ULMFiT's classifier)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from export.config import OnnxConfig, ParityTolerance, TensorConfig
from export.parity import ParityCase
from export.quantize import QuantizationGate
from export.report import TrainingSummary
from pipelines.data import download_book_dataset, read_table, read_text_file
from pipelines.errors import PipelineError
from pipelines.tasks.base import (
    BuiltLearner, PreparedData, PreprocessingProbe, Task, TaskOptions, option, single_label_refusal, valid_data_option,
)
from pipelines.tasks.tabular import class_labels, classes_seen_in_training
from pipelines.training import TrainingHistory
from services.manifest import TextPreprocessing
from services.text_preprocessing import RULES as TOKENIZER_RULES, Numericalizer, batch_ids, tokenize

MODEL_SIZES = {"small": dict(emb_sz=128, n_hid=256, n_layers=2), "book": dict(emb_sz=400, n_hid=1152, n_layers=3)}
# Strings that exercise every tokenisation rule, checked against fastai at export.
TOKENIZER_PROBES = [
    "", "   ", "This movie was GREAT!!! I loved it.", "<br /><br />Terrible &amp; boring &quot;film&quot;.",
    "soooo gooood, really really really really good", "Tabs\tand\nnew lines", "emoji 😀 and café naïve",
    "A/B testing #hashtag and C:\\path", "I'M SHOUTING NOW", "Mr. Smith's dog... isn't it?", "xxbos xxunk",
]


def detect_columns(df, text_col: str | None, label_col: str | None, label_optional: bool = False) -> tuple[str, str | None]:
    """The text column is the one with the longest strings; the label the other with the fewest values."""
    import pandas as pd

    for name, value in (("--text-col", text_col), ("--label-col", label_col)):
        if value is not None and value not in df.columns:
            raise PipelineError(f"{name} {value!r} is not a column (columns: {', '.join(map(str, df.columns))})")
    strings = [c for c in df.columns if pd.api.types.is_string_dtype(df[c]) or df[c].dtype == object]
    if text_col is None:
        if not strings:
            raise PipelineError("no text column found; name it with --text-col")
        text_col = max(strings, key=lambda c: df[c].astype(str).str.len().mean())
    if label_col is None:
        others = [c for c in df.columns if c != text_col and c != "is_valid"]
        if not others:
            if label_optional:
                return text_col, None
            raise PipelineError("no label column found; name it with --label-col")
        label_col = min(others, key=lambda c: df[c].nunique())
    return text_col, label_col


def repeated(ids: list[int], length: int) -> list[int]:
    """`ids` repeated to exactly `length` tokens."""
    return (ids * (length // max(1, len(ids)) + 1))[:length]


# Parity and the int8 gate run fastai's model on at most this many validation texts (or sample texts).
PARITY_TEXTS = 1000


def read_text_folder(folder: Path, option: str = "--data"):
    """Texts in class folders, IMDB's layout (what fastai's `TextDataLoaders.from_folder` reads): one .txt
    file per text, its class the folder it is in. Where there is a train/ folder, its texts train and those of
    valid/ (or val/, else test/, as the book's `valid='test'`) validate; texts elsewhere, and IMDB's unlabelled
    `unsup/`, are left out with a line. Without train/, fastai's random 20% split follows."""
    import pandas as pd

    from pipelines.vision import TRAINING_FOLDERS, VALIDATION_FOLDERS

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() == ".txt" and f.is_file())
    parts = [f.relative_to(folder).parts for f in files]
    tops = {p[0].lower() for p in parts if len(p) > 2}
    validation = (tops & VALIDATION_FOLDERS) or ({"test"} & tops)
    split = bool(tops & TRAINING_FOLDERS and validation)
    keep = [len(p) > (2 if split else 1) and p[-2] != "unsup" and (not split or p[0].lower() in TRAINING_FOLDERS | validation)
            for p in parts]
    if not any(keep):
        raise PipelineError(f"{option} {folder}: no .txt files in class folders (expected <class>/<name>.txt, or IMDB's "
                            "train/<class>/<name>.txt with valid/ or test/ beside it)")
    if not all(keep):
        left = sorted({"/".join(p[:-1]) or "." for p, k in zip(parts, keep) if not k})
        where = f"class folders of train/ and {'/'.join(sorted(validation))}/" if split else "class folders"
        click.echo(f"      left out {len(keep) - sum(keep)} text file(s) in {', '.join(name + '/' for name in left[:3])}"
                   f"{', ...' if len(left) > 3 else ''}: texts are read from {where}, never from unsup/ (unlabelled)")
    not_utf8, rows = 0, []
    for path, part, kept in zip(files, parts, keep):
        if not kept:
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text, not_utf8 = raw.decode("latin-1"), not_utf8 + 1
        rows.append((text, part[-2], split and part[0].lower() in validation))
    if not_utf8:
        click.echo(f"      {not_utf8} text file(s) are not UTF-8: read as Latin-1")
    frame = pd.DataFrame(rows, columns=["text", "label", "is_valid"])
    return frame if split else frame.drop(columns="is_valid")


@dataclass
class TextOptions(TaskOptions):
    data: str = option("imdb_sample", "'imdb_sample' or 'imdb' (fastai's untar_data, as the book), a CSV/TSV/"
                                      "Parquet file with a text and a label column, or a folder of class folders of "
                                      ".txt files (IMDB's layout).")
    valid_data: Path | None = valid_data_option()
    text_col: str | None = option(None, "Text column [default: the one with the longest strings].")
    label_col: str | None = option(None, "Label column [default: the other column with fewest values].")
    pretrained: str = option("auto", "WikiText-103 weights: 'auto' uses them when cached or downloadable, else "
                                     "trains from scratch.", choices=("auto", "yes", "no"))
    model_size: str = option("auto", "AWD_LSTM size: 'book' (emb 400, hidden 1152, 3 layers; needed for pretrained "
                                     "weights) or 'small' (emb 128, hidden 256, 2 layers); 'auto' picks book when "
                                     "pretrained, else small.", choices=("auto", *MODEL_SIZES))
    drop_mult: float | None = option(None, "Dropout multiplier [default: 0.5 pretrained, 0.3 small].", type=float)
    lm_epochs: int = option(0, "ULMFiT: first fine-tune a language model on the texts for this many epochs, then "
                               "start the classifier from its encoder (save_encoder / load_encoder, as the book).",
                            type=click.IntRange(0))


class TextTask(Task):
    name = "text"
    summary = "a text in, a class out (fastbook's text_classifier_learner with AWD_LSTM)"
    Options = TextOptions
    onnx_config = OnnxConfig(
        inputs=(TensorConfig("tokens", "int64", {0: "batch", 1: "sequence"}), TensorConfig("lengths", "int64", {0: "batch"})),
        outputs=(TensorConfig("logits", "float32", {0: "batch"}),),
        opset=17,
        tolerance=ParityTolerance(logits_atol=1e-4, logits_rtol=1e-4, probability_atol=1e-4, preprocessing_atol=0.0),
        exporter="torchscript",
    )
    quantization_gate = QuantizationGate("dynamic", {"accuracy": 1.0}, min_agreement=0.99, min_speedup=1.2)
    sample_help = ("a text file (one text per line), a CSV/TSV/Parquet file with a text column (and optionally a label "
                   "column), or a folder of class folders of .txt files")
    scratch_epochs, scratch_lr = 6, 5e-3

    # ----- data -------------------------------------------------------------------------------
    def load_frame(self, options: TextOptions):
        import pandas as pd
        from fastai.data.external import URLs

        data = options.data
        offline = "--data FILE.csv --text-col COLUMN --label-col COLUMN (any CSV of texts and labels)"
        if data == "imdb_sample":
            path = download_book_dataset(URLs.IMDB_SAMPLE, "IMDB_SAMPLE", offline)
            return pd.read_csv(path / "texts.csv"), "text", "label", f"IMDB_SAMPLE ({path})"
        if data == "imdb":
            path = download_book_dataset(URLs.IMDB, "IMDB", offline)
            return read_text_folder(path), "text", "label", f"IMDB ({path})"
        if Path(data).expanduser().is_dir():
            return read_text_folder(Path(data).expanduser()), "text", "label", f"folder {data} (class = parent folder)"
        df = read_table(Path(data).expanduser(), expected="'imdb_sample', 'imdb', a CSV/TSV/Parquet file or a folder "
                                                          "of class folders of .txt files")
        text_col, label_col = detect_columns(df, options.text_col, options.label_col)
        return df, text_col, label_col, f"file {data}"

    def prepare_data(self, options: TextOptions) -> PreparedData:
        import pandas as pd
        from fastai.text.all import RandomSplitter, TextDataLoaders

        df, text_col, label_col, source = self.load_frame(options)
        if options.valid_data:
            valid = read_table(Path(options.valid_data), "--valid-data")
            missing = [column for column in (text_col, label_col) if column not in valid.columns]
            if missing:
                raise PipelineError(f"--valid-data {options.valid_data}: no column {', '.join(map(repr, missing))} "
                                    f"(columns: {', '.join(map(str, valid.columns))})")
            df = pd.concat([df.assign(is_valid=False), valid.assign(is_valid=True)], ignore_index=True)
            source += f", validation {options.valid_data}"
        df = df[df[text_col].notna() & df[label_col].notna()].reset_index(drop=True)
        df[label_col] = class_labels(df[label_col])
        if df[label_col].nunique() < 2:
            raise PipelineError(f"{source}: the label column {label_col!r} has fewer than 2 classes")
        valid_kwargs = {"valid_col": "is_valid"}
        if "is_valid" in df.columns:
            df = df[classes_seen_in_training(df[label_col], df["is_valid"].to_numpy(dtype=bool))].reset_index(drop=True)
        else:  # the rows fastai's own split (valid_pct=0.2, this seed) puts in validation, to check their classes
            is_valid = np.isin(np.arange(len(df)), RandomSplitter(valid_pct=0.2, seed=options.seed)(df)[1])
            keep = classes_seen_in_training(df[label_col], is_valid)
            if keep.all():
                valid_kwargs = {"valid_pct": 0.2}  # fastai splits as before: the same rows, in its order
            else:
                df = df.assign(is_valid=is_valid)[keep].reset_index(drop=True)
        dls_lm = None
        if options.lm_epochs:
            # The language model reads every text (labels unused); the classifier then shares its vocabulary.
            dls_lm = TextDataLoaders.from_df(df, text_col=text_col, is_lm=True, valid_pct=0.1, seed=options.seed,
                                             bs=options.batch_size, seq_len=72)
        dls = TextDataLoaders.from_df(df, text_col=text_col, label_col=label_col, seed=options.seed,
                                      bs=options.batch_size, seq_len=72,
                                      text_vocab=dls_lm.vocab if dls_lm is not None else None, **valid_kwargs)
        valid_frame = dls.valid_ds.items
        raw_valid = df.loc[valid_frame.index] if hasattr(valid_frame, "index") else None
        return PreparedData(dls=dls, source=source, details={
            "texts": len(df), "train_texts": len(dls.train_ds), "valid_texts": len(dls.valid_ds),
            "text_col": text_col, "label_col": label_col, "vocab": len(dls.vocab[0]), "raw_valid": raw_valid,
            "dls_lm": dls_lm,
        })

    def sample_data(self, learn, sample: Path) -> PreparedData:
        """A text file (one text per line) or a table with a text column; a label column (the other column
        with the fewest values whose values are the learner's classes) gives accuracy."""
        import pandas as pd

        sample = Path(sample).expanduser()
        if sample.is_dir():
            frame = read_text_folder(sample, "--sample").drop(columns="is_valid", errors="ignore")
            text_col, label_col = "text", "label" if set(frame["label"]) <= set(self.labels(learn)) else None
        elif not sample.is_file():
            raise PipelineError(f"--sample {sample}: no such file (expected {self.sample_help})")
        elif sample.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
            frame = read_table(sample, "--sample", self.sample_help)
            text_col, label_col = detect_columns(frame, "text" if "text" in frame.columns else None, None, label_optional=True)
            frame = frame[frame[text_col].notna()].reset_index(drop=True)
            if label_col is not None and frame[label_col].notna().all():
                frame[label_col] = class_labels(frame[label_col])
            if label_col is not None and not set(frame[label_col]) <= set(self.labels(learn)):
                label_col = None  # not the learner's classes, or not every text labelled: no accuracy
        else:
            lines = [line for line in read_text_file(sample, "--sample").splitlines() if line.strip()]
            frame, text_col, label_col = pd.DataFrame({"text": lines}), "text", None
        if frame.empty:
            raise PipelineError(f"--sample {sample}: no texts in it")
        return PreparedData(dls=learn.dls, source=f"sample {sample}", details={
            "sample_texts": len(frame), "text_col": text_col, "label_col": label_col, "raw_valid": frame,
        })

    # ----- model and training -----------------------------------------------------------------
    def build_learner(self, data: PreparedData, options: TextOptions, pretrained: str | None = None) -> BuiltLearner:
        from fastai.text.all import AWD_LSTM, accuracy, text_classifier_learner

        pretrained = pretrained or options.pretrained
        size = options.model_size
        extras = {"dls_lm": data.details["dls_lm"]}
        if pretrained != "no" and size in ("auto", "book"):
            try:
                drop_mult = options.drop_mult or 0.5
                learn = text_classifier_learner(data.dls, AWD_LSTM, drop_mult=drop_mult, pretrained=True, metrics=accuracy)
                resolved = dataclasses.replace(options, model_size="book", drop_mult=drop_mult)
                return BuiltLearner(learn, resolved, True, "WikiText-103 weights", extras)
            except Exception as error:
                if pretrained == "yes":
                    raise PipelineError(f"--pretrained yes, but the WikiText-103 weights could not be loaded "
                                        f"({type(error).__name__}: {error})") from None
                click.echo(f"note: WikiText-103 weights unavailable ({type(error).__name__}), training from scratch")
        size = "small" if size == "auto" else size
        drop_mult = options.drop_mult or 0.3
        learn = text_classifier_learner(data.dls, AWD_LSTM, drop_mult=drop_mult, pretrained=False,
                                        config=dict(MODEL_SIZES[size]), metrics=accuracy)
        return BuiltLearner(learn, dataclasses.replace(options, model_size=size, drop_mult=drop_mult), False,
                            "trained from scratch", extras)

    def fine_tune_language_model(self, built: BuiltLearner) -> str:
        """ULMFiT's middle step: a language model on these texts, whose encoder the classifier starts from."""
        from fastai.text.all import AWD_LSTM, Perplexity, accuracy, awd_lstm_lm_config, language_model_learner

        learn, options, dls_lm = built.learn, built.options, built.extras["dls_lm"]
        # unlike the classifier's, the language model's config replaces fastai's defaults: merge them
        config = None if options.model_size == "book" else {**awd_lstm_lm_config, **MODEL_SIZES[options.model_size]}
        learn_lm = language_model_learner(dls_lm, AWD_LSTM, drop_mult=options.drop_mult, pretrained=built.pretrained,
                                          config=config, metrics=[accuracy, Perplexity()])
        epochs = options.lm_epochs
        click.echo(f"language model: fit_one_cycle({epochs}, 2e-2) on {len(dls_lm.train_ds)} texts")
        saved_path, scratch = learn.path, Path(tempfile.mkdtemp(prefix="text-lm-"))
        try:
            learn_lm.path = learn.path = scratch
            learn_lm.fit_one_cycle(epochs, 2e-2)
            learn_lm.save_encoder("finetuned")
            learn.load_encoder("finetuned")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            learn.path = saved_path
        accuracy_lm, perplexity = (float(v) for v in learn_lm.recorder.values[-1][2:4])
        return f"language model fine-tuned {epochs} epochs (next-token accuracy {accuracy_lm:.3f}, perplexity {perplexity:.1f}), then "

    def pretrained_schedule(self, built: BuiltLearner, history: TrainingHistory) -> tuple[str, str]:
        learn = built.learn
        schedule = "book: gradual unfreezing, fit_one_cycle 1/1/1/2 epochs with discriminative learning rates"
        reason = "the encoder starts from WikiText-103 weights"
        click.echo(f"schedule: {schedule} ({reason})")
        history.fit("head", lambda: learn.fit_one_cycle(1, 2e-2))
        learn.freeze_to(-2)
        history.fit("last two", lambda: learn.fit_one_cycle(1, slice(1e-2 / 2.6**4, 1e-2)))
        learn.freeze_to(-3)
        history.fit("last three", lambda: learn.fit_one_cycle(1, slice(5e-3 / 2.6**4, 5e-3)))
        learn.unfreeze()
        history.fit("all", lambda: learn.fit_one_cycle(2, slice(1e-3 / 2.6**4, 1e-3)))
        return schedule, reason

    def train(self, built: BuiltLearner, data: PreparedData) -> TrainingSummary:
        from fastai.callback.tracker import SaveModelCallback

        learn, options = built.learn, built.options
        prefix = self.fine_tune_language_model(built) if built.extras.get("dls_lm") is not None else ""
        history = TrainingHistory(learn)
        if built.pretrained:
            schedule, reason = self.pretrained_schedule(built, history)
            return history.summary(prefix + schedule, reason)
        epochs, lr = options.epochs or self.scratch_epochs, options.lr or self.scratch_lr
        schedule = prefix + f"from scratch ({options.model_size} AWD_LSTM): fit_one_cycle({epochs}, {lr:g}), best epoch kept"
        reason = "no WikiText-103 weights; a small model overfits after a few epochs, so the best validation accuracy is kept"
        click.echo(f"schedule: {schedule} ({reason})")
        saved, learn.path = learn.path, Path(tempfile.mkdtemp(prefix="text-best-"))
        try:
            learn.unfreeze()
            history.fit("all layers", lambda: learn.fit_one_cycle(epochs, lr, cbs=SaveModelCallback(monitor="accuracy", fname="best")))
        finally:
            shutil.rmtree(learn.path, ignore_errors=True)
            learn.path = saved
        summary = history.summary(schedule, reason)
        best = max(summary.epochs, key=lambda row: row["accuracy"])
        summary.final_metrics = {k: v for k, v in best.items() if k not in ("stage", "epoch")} | {"best_epoch": best["epoch"]}
        return summary

    @classmethod
    def recognises(cls, learn) -> bool:
        from fastai.text.models.core import PoolingLinearClassifier, SentenceEncoder, SequentialRNN

        model = learn.model
        return (isinstance(model, SequentialRNN) and len(model) == 2 and isinstance(model[0], SentenceEncoder)
                and isinstance(model[1], PoolingLinearClassifier))

    def refusal(self, learn) -> str | None:
        return single_label_refusal(learn, self.name)

    # ----- export -----------------------------------------------------------------------------
    def encoder_settings(self, learn) -> tuple[int, int]:
        encoder = learn.model[0]
        return encoder.bptt, encoder.max_len

    def exportable_module(self, learn):
        from pipelines.tasks.text_model import ExportableTextClassifier

        return ExportableTextClassifier(learn.model.eval().cpu(), *self.encoder_settings(learn)).eval()

    def example_inputs(self, learn):
        import torch

        vocab_size = len(learn.dls.vocab[0])  # fastai's smallest: its 9 special tokens rounded up to 16
        return torch.randint(2, min(50, vocab_size), (2, 90)), torch.tensor([90, 40])

    def fastai_ids(self, dls, text: str) -> list[int]:
        return dls.test_dl([text], bs=1).one_batch()[0][0].tolist()

    def fastai_logits(self, learn, ids: list[int]) -> np.ndarray:
        """fastai's own model on one text, as `learn.predict` runs it (no padding)."""
        import torch

        with torch.no_grad():
            logits = learn.model.eval().cpu()(torch.tensor([ids]))[0]  # the model returns (logits, raw, out)
        return logits[0].numpy()

    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]:
        frame = data.details["raw_valid"]
        whole = len(frame)
        if whole > PARITY_TEXTS:  # fastai runs one text at a time: 0.56 s for 300 tokens through the
            # full-size AWD_LSTM on 2 cores (measured), hours for the 25,000 of full IMDB
            frame = frame.iloc[np.linspace(0, whole - 1, PARITY_TEXTS).round().astype(int)]
        texts = list(frame[data.details["text_col"]].astype(str))
        labels = self.labels(learn)
        label_col = data.details["label_col"]
        targets = None if label_col is None else np.array([labels.index(v) for v in frame[label_col]])
        ids = [self.fastai_ids(learn.dls, text) for text in texts]
        bptt, max_len = self.encoder_settings(learn)
        pad = learn.dls.vocab[0].index("xxpad")
        by_length = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        singles = {  # the encoder reads bptt tokens at a time and keeps the outputs of the last max_len
            f"short text (< {bptt} tokens)": ids[by_length[0]][:bptt // 2],
            f"exactly {bptt} tokens": repeated(ids[by_length[-1]], bptt),
            f"long text (> {bptt} tokens)": repeated(ids[by_length[-1]], max(250, 3 * bptt)),
        }
        if max_len is not None:  # None: fastai keeps every token's output
            long_text = " ".join(texts)
            while len(self.fastai_ids(learn.dls, long_text)) <= max_len + bptt:
                long_text += " " + long_text
            singles[f"longer than max_len ({max_len})"] = self.fastai_ids(learn.dls, long_text)
        cases = []
        for name, single in singles.items():
            tokens, lengths = batch_ids([single], pad)
            cases.append(ParityCase(name, {"tokens": tokens, "lengths": lengths}, None, f"{len(single)} tokens",
                                    expected=self.fastai_logits(learn, single)[None]))
        mixed = [ids[i] for i in by_length[:: max(1, len(by_length) // 7)][:7]]
        for name, group, group_targets in (
            ("mixed lengths, batch of 7", mixed, None),
            (f"{'sample' if 'sample_texts' in data.details else 'validation set'} "
             f"({len(ids) if len(ids) == whole else f'{len(ids)} of {whole}, evenly spaced'})", ids, targets),
        ):
            tokens, lengths = batch_ids(group, pad)
            expected = np.stack([self.fastai_logits(learn, one) for one in group])
            cases.append(ParityCase(name, {"tokens": tokens, "lengths": lengths}, group_targets,
                                    f"right-padded to {tokens.shape[1]} tokens", expected=expected))
        return cases

    def bench_inputs(self, learn, case: ParityCase) -> dict[str, dict[str, np.ndarray]]:
        """Batch 1 and 16 of the evaluation texts, each batch padded only to its own longest text (as the
        service pads), not to the longest of the whole set."""
        inputs = super().bench_inputs(learn, case)
        for rows in inputs.values():
            rows["tokens"] = np.ascontiguousarray(rows["tokens"][:, :int(rows["lengths"].max())])
        return inputs

    def labels(self, learn) -> list[str]:
        return [str(v) for v in learn.dls.vocab[1]]

    def preprocessing(self, learn) -> TextPreprocessing:
        from fastai.text.all import Tokenizer

        tokenizer = next(t for t in learn.dls.train_ds.tls[0].tfms.fs if isinstance(t, Tokenizer))
        if type(tokenizer.tok).__name__ != "SpacyTokenizer":
            raise PipelineError(f"this text learner tokenizes with {type(tokenizer.tok).__name__}; the service "
                                "reproduces fastai's default word tokenizer (SpacyTokenizer) only")
        rules = [getattr(rule, "__name__", type(rule).__name__) for rule in tokenizer.rules]
        unknown = [rule for rule in rules if rule not in TOKENIZER_RULES]
        if unknown:
            raise PipelineError(f"this text learner's tokenizer has rule(s) {', '.join(unknown)} that the service "
                                f"does not have (it reproduces fastai's: {', '.join(TOKENIZER_RULES)})")
        bptt, max_len = self.encoder_settings(learn)
        vocab = list(learn.dls.vocab[0])
        language = getattr(getattr(tokenizer.tok.pipe, "__self__", None), "lang", "en")  # spaCy's blank(lang)
        return TextPreprocessing(rules=rules, vocab=vocab, pad_index=vocab.index("xxpad"), bptt=bptt,
                                 max_len=max_len, language=language)

    def preprocessing_probes(self, learn, data: PreparedData):
        spec = self.preprocessing(learn)
        numericalize = Numericalizer(spec)
        corpus = TOKENIZER_PROBES + list(data.details["raw_valid"][data.details["text_col"]].astype(str))[:200]
        for text in corpus:
            yield PreprocessingProbe(repr(text[:60]), np.array(numericalize(tokenize(text, spec))),
                                     np.array(self.fastai_ids(learn.dls, text)))
