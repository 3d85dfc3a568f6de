"""Siamese latency: PyTorch eager vs ONNX Runtime at batch 1 and 16 (same thread count), and HTTP
latency of a real `bentoml serve` at batch 1. Prints one Markdown table.

    python -m benchmarks.bench_siamese [--artifact artifacts/siamese/<run>] [--threads 2]

Without --artifact it benchmarks the model that siamese:latest resolves to in the BentoML store.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import model_arguments, run_main


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0], "siamese")

    import bentoml
    import torch

    from pipelines.registry import get_task
    from benchmarks.common import log_table, row, serving_env, timed
    from services.images import image_to_tensor
    from services.manifest import MODEL_FILE, Manifest
    from services.runtime import create_session
    from tests.helpers import bentoml_server

    folder = args.artifact
    manifest = Manifest.read(folder)
    task = get_task("siamese")
    torch.set_num_threads(args.threads)
    model = task.model_from_artifact(folder)
    session = create_session(folder / MODEL_FILE, "cpu", threads=args.threads)
    size = (manifest.preprocessing.height, manifest.preprocessing.width)
    rows = []
    for batch in (1, 16):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((batch, 3, *size), dtype=np.float32)
        b = rng.standard_normal((batch, 3, *size), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def eager():
            with torch.inference_mode():
                model(ta, tb)

        rows.append(row(f"PyTorch eager ({args.threads} threads)", batch, timed(eager, args.repeats), "pairs/s"))
        rows.append(row(f"ONNX Runtime CPU ({args.threads} threads)", batch,
                        timed(lambda: session.run(None, {"image_a": a, "image_b": b}), args.repeats), "pairs/s"))

    from PIL import Image

    with tempfile.TemporaryDirectory() as scratch:
        first, second = Path(scratch) / "a.png", Path(scratch) / "b.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(first)
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 80, 3), np.uint8)).save(second)
        with Image.open(first) as image:
            rows.append(row("preprocessing one image (numpy+Pillow)", 1,
                            timed(lambda: image_to_tensor(image, manifest.preprocessing), args.repeats), "images/s"))
        env = serving_env(args.threads)  # HTTP serves siamese:latest
        with bentoml_server("services.siamese:SiameseService", env=env, log_path=Path(scratch) / "serve.log") as url:
            client = bentoml.SyncHTTPClient(url)
            rows.append(row("HTTP /predict (bentoml serve, multipart)", 1,
                            timed(lambda: client.predict(image_a=first, image_b=second), args.repeats), "pairs/s"))
            client.close()

    log_table("latency_siamese", f"Siamese model {folder} ({manifest.provenance['options']['arch']}, {size[0]}x{size[1]} px), "
                f"{args.threads} threads, {args.repeats} runs each", rows)


if __name__ == "__main__":
    run_main(main)
