"""U-Net latency: fastai's DynamicUnet in eager PyTorch vs ONNX Runtime at batch 1 for several input
sizes (same thread count), and HTTP /segment of a real `bentoml serve`. Prints one Markdown table.

    python -m benchmarks.bench_unet [--artifact artifacts/unet/<run>] [--threads 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import model_arguments, run_main


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0], "unet")

    import requests
    import torch
    from PIL import Image

    from benchmarks.common import log_table, row, serving_env, timed
    from pipelines.registry import get_task
    from services.manifest import MODEL_FILE, Manifest
    from services.runtime import create_session
    from tests.helpers import bentoml_server, image_bytes

    folder = args.artifact
    manifest = Manifest.read(folder)
    torch.set_num_threads(args.threads)
    model = get_task("unet").model_from_artifact(folder)
    session = create_session(folder / MODEL_FILE, "cpu", threads=args.threads)
    rows = []
    for height, width in ((64, 96), (100, 150), (360, 480)):
        image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
        tensor = torch.from_numpy(image)

        def eager():
            with torch.inference_mode():
                model(tensor)

        rows.append(row(f"PyTorch eager {height}x{width}", 1, timed(eager, args.repeats), "images/s"))
        rows.append(row(f"ONNX Runtime CPU {height}x{width}", 1,
                        timed(lambda: session.run(None, {"image": image}), args.repeats), "images/s"))
    with tempfile.TemporaryDirectory() as scratch:
        env = serving_env(args.threads)  # HTTP serves unet:latest
        upload = image_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 150, 3), np.uint8)), "PNG")
        with bentoml_server("services.unet:UnetService", env=env, log_path=Path(scratch) / "serve.log") as url:
            with requests.Session() as http:
                rows.append(row("HTTP /segment 100x150 PNG (bentoml serve)", 1, timed(
                    lambda: http.post(f"{url}/segment", files={"image": ("a.png", upload)}, timeout=60).raise_for_status(),
                    args.repeats), "images/s"))
    log_table("latency_unet", f"U-Net {folder} ({manifest.provenance['options']['arch']}), {args.threads} threads, "
                f"{args.repeats} runs each", rows)


if __name__ == "__main__":
    run_main(main)
