"""Text latency: fastai's AWD-LSTM classifier in eager PyTorch vs the exported model in ONNX Runtime, at
batch 1 / 100 tokens and batch 16 / 200 tokens (same thread count), plus tokenisation and HTTP /classify.

    python -m benchmarks.bench_text [--artifact artifacts/text/<run>] [--threads 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import model_arguments, run_main


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0], "text")

    import requests
    import torch

    from benchmarks.common import log_table, row, serving_env, timed
    from pipelines.registry import get_task
    from services.manifest import MODEL_FILE, Manifest
    from services.runtime import create_session
    from services.text_preprocessing import Numericalizer, tokenize
    from tests.helpers import bentoml_server

    folder = args.artifact
    manifest = Manifest.read(folder)
    spec = manifest.preprocessing
    torch.set_num_threads(args.threads)
    model = get_task("text").model_from_artifact(folder)
    session = create_session(folder / MODEL_FILE, "cpu", threads=args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for batch, length in ((1, 100), (16, 200)):
        tokens = rng.integers(2, len(spec.vocab), (batch, length)).astype(np.int64)
        lengths = np.full(batch, length, dtype=np.int64)
        as_tensor = torch.from_numpy(tokens)

        def eager():
            with torch.inference_mode():
                model(as_tensor)

        rows.append(row(f"PyTorch eager (fastai model) seq {length}", batch, timed(eager, args.repeats), "texts/s"))
        rows.append(row(f"ONNX Runtime CPU seq {length}", batch,
                        timed(lambda: session.run(None, {"tokens": tokens, "lengths": lengths}), args.repeats), "texts/s"))
    review = "This coffee was GREAT!!! Fresh, rich and smooth <br /><br />I'd buy it again. " * 4
    numericalize = Numericalizer(spec)
    rows.append(row("tokenise + numericalise (spaCy, no fastai)", 1,
                    timed(lambda: numericalize(tokenize(review, spec)), args.repeats), "texts/s"))
    with tempfile.TemporaryDirectory() as scratch:
        env = serving_env(args.threads)
        with bentoml_server("services.text:TextService", env=env, log_path=Path(scratch) / "serve.log") as url:
            with requests.Session() as http:
                rows.append(row("HTTP /classify (bentoml serve)", 1, timed(
                    lambda: http.post(f"{url}/classify", json={"text": review}, timeout=60).raise_for_status(),
                    args.repeats), "texts/s"))
    log_table("latency_text", f"Text {folder} ({manifest.provenance['options']['model_size']} AWD_LSTM, vocab {len(spec.vocab)}), "
                f"{args.threads} threads, {args.repeats} runs each", rows)


if __name__ == "__main__":
    run_main(main)
