"""What encoding the U-Net's PNG responses costs: the mask (/unet/segment) and the overlay (/unet/overlay) of
one upload at several sizes, saved as BentoML saves a returned image, at Pillow's default zlib level (6)
and at the level the service uses (services.unet.FAST_PNG), with the bytes each gives.

    python -m benchmarks.png_encoding ARTIFACT [--repeats 30] [--sizes 96x64 960x720 ...]

ARTIFACT: a U-Net artifact folder (or a `unet:TAG` in the BentoML store). Writes its table and log under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import io
import statistics
from pathlib import Path

from benchmarks.common import log_table, run_main, scratch_folder, timed


def encoded(image, **params) -> bytes:
    """The image as BentoML encodes a returned PIL image for the response."""
    buffer = io.BytesIO()
    image.save(buffer, format=image.format or "PNG", **params)
    return buffer.getvalue()


def size_rows(handler, scene, size: str, scratch: Path, repeats: int) -> list[dict]:
    from PIL import Image

    from services.unet import FAST_PNG

    width, height = (int(n) for n in size.split("x"))
    upload = scene.resize((width, height), Image.BILINEAR)
    upload.save(scratch / "upload.png")
    responses = {"mask": handler.segment(scratch / "upload.png"), "overlay": handler.overlay(scratch / "upload.png")}
    fast = f"level {FAST_PNG['compress_level']}"
    rows = []
    for name, image in responses.items():
        image.encoderinfo = {}  # Pillow's default first, then the service's level passed explicitly
        default_ms = statistics.median(timed(lambda: encoded(image), repeats))
        fast_ms = statistics.median(timed(lambda: encoded(image, **FAST_PNG), repeats))
        default_bytes, fast_bytes = len(encoded(image)), len(encoded(image, **FAST_PNG))
        rows.append({"response": name, "upload": size, "level 6 (default) ms": default_ms, f"{fast} ms": fast_ms,
                     "faster": default_ms / fast_ms, "level 6 bytes": default_bytes, f"{fast} bytes": fast_bytes,
                     "bytes more": f"{fast_bytes / default_bytes - 1:.0%}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sizes", nargs="*", default=["96x64", "150x100", "480x360", "960x720"],
                        help="upload sizes, WIDTHxHEIGHT")
    args = parser.parse_args()

    from PIL import Image

    from pipelines.bench import resolve_artifact
    from services.client import example_image
    from services.loading import ServedModel
    from services.unet import UnetHandler

    folder = resolve_artifact(args.artifact)
    handler = UnetHandler(ServedModel.load(folder.name, folder, "unet"))
    scene = Image.open(io.BytesIO(example_image(seed=1))).convert("RGB")
    with scratch_folder("png-encoding-") as scratch:
        rows = [row for size in args.sizes for row in size_rows(handler, scene, size, scratch, args.repeats)]
    log_table("png_encoding", f"U-Net response PNGs ({folder}): encoding time, median of {args.repeats}, and "
                              "size: Pillow's default zlib level against the service's", rows)


if __name__ == "__main__":
    run_main(main)
