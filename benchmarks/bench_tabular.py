"""Tabular latency at batch 1 and 1024 records: fastai (`learn.predict`, `get_preds` over `test_dl`)
against the served path (numpy preprocessing + ONNX Runtime, in process and over HTTP).

    python -m benchmarks.bench_tabular [--data penguins|FILE.csv --target COL] [--threads 2]

It trains a model for one epoch first (latency does not depend on accuracy), in a temporary model store.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.common import run_main, scratch_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="penguins")
    parser.add_argument("--target", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with scratch_folder("bench-tabular-") as scratch:
        measure(args, scratch)


def measure(args: argparse.Namespace, scratch: Path) -> None:
    os.environ["BENTOML_HOME"] = str(scratch / "bentoml")
    import pandas as pd
    import requests
    import torch

    from benchmarks.common import log_table, row, serving_env, timed
    from pipelines.registry import get_task
    from pipelines.run import train_and_export
    from pipelines.tasks.tabular import frame_to_records
    from services.manifest import MODEL_FILE
    from services.runtime import create_session
    from services.tabular_preprocessing import encode_records
    from tests.helpers import TINY_TABULAR_OPTIONS, bentoml_server

    torch.set_num_threads(args.threads)
    task = get_task("tabular")
    options = dict(TINY_TABULAR_OPTIONS, data=args.data, target=args.target, epochs=1, output=scratch / "run")
    result = train_and_export(task, options)
    learn, spec = result.learn, result.manifest.preprocessing
    frame, _, _ = task.load_frames(task.Options.from_mapping(options))
    frame = frame.drop(columns=[spec.target])
    big = pd.concat([frame] * (1024 // len(frame) + 1), ignore_index=True).head(1024)
    session = create_session(result.output_dir / MODEL_FILE, "cpu", threads=args.threads)

    rows = []
    for batch, rows_frame in ((1, big.head(1)), (1024, big)):
        records = frame_to_records(rows_frame)
        if batch == 1:
            rows.append(row("fastai learn.predict", 1, timed(lambda: learn.predict(rows_frame.iloc[0]), args.repeats), "records/s"))
        rows.append(row("fastai get_preds(test_dl)", batch,
                        timed(lambda: learn.get_preds(dl=learn.dls.test_dl(rows_frame)), args.repeats), "records/s"))
        rows.append(row("served preprocessing only (numpy)", batch, timed(lambda: encode_records(records, spec), args.repeats), "records/s"))

        def served():
            x_cat, x_cont = encode_records(records, spec)
            session.run(None, {"x_cat": x_cat, "x_cont": x_cont})

        rows.append(row("served in process (numpy + ONNX Runtime)", batch, timed(served, args.repeats), "records/s"))

    env = serving_env(args.threads)
    with bentoml_server("services.tabular:TabularService", env=env, log_path=scratch / "serve.log") as url:
        with requests.Session() as http:
            for batch, rows_frame in ((1, big.head(1)), (1024, big)):
                payload = {"records": frame_to_records(rows_frame)}
                rows.append(row("HTTP /predict (bentoml serve, JSON)", batch,
                                timed(lambda: http.post(f"{url}/predict", json=payload, timeout=60).raise_for_status(), args.repeats),
                                "records/s"))
    log_table("latency_tabular", f"Tabular ({args.data}, {len(spec.cat_names)} categorical + {len(spec.cont_names)} continuous columns), "
                f"{args.threads} threads, {args.repeats} runs each", rows)


if __name__ == "__main__":
    run_main(main)
