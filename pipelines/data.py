"""Data helpers shared by tasks: the cache folder, embedded datasets, book downloads, tables and image files."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import PipelineError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def cache_dir() -> Path:
    root = os.environ.get("PIPELINES_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastai-onnx-pipelines"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def written_once(folder: Path, prefix: str):
    """Yield a staging folder to fill; it becomes `folder` only when complete, so an interrupted run
    leaves no half-written dataset behind (and a concurrent writer that finished first wins)."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_dir()))
    try:
        yield staging
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.is_dir():
            raise


def digits_image_folder(size: int = 32) -> Path:
    """scikit-learn's bundled 8x8 digits written once as RGB JPEGs named like the book's pets files.

    Files are `{digit name}_{n}.jpg`, so the book's `label_func` regex `^(.*)_\\d+.jpg$` gives the
    class. Written to a temporary folder and renamed into place, so an interrupted run leaves no half
    dataset behind.
    """
    folder = cache_dir() / f"digits_{size}px"
    if folder.is_dir():
        return folder
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    with written_once(folder, "digits-") as staging:
        for n, (pixels, target) in enumerate(zip(digits.images, digits.target)):
            grey = (pixels / 16.0 * 255.0).round().clip(0, 255).astype(np.uint8)
            image = Image.fromarray(grey, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
            image.save(staging / f"{DIGIT_NAMES[target]}_{n}.jpg", quality=95)
    return folder


def download_book_dataset(url: str, description: str, offline_alternatives: str) -> Path:
    """fastai's `untar_data`, with the failure a user without internet needs to read."""
    from fastai.data.external import untar_data

    try:
        return Path(untar_data(url))
    except Exception as error:  # urllib, requests and fastdownload raise many types
        raise PipelineError(
            f"could not download {description} from {url} ({type(error).__name__}: {error}). "
            f"Without internet use {offline_alternatives}"
        ) from None


def read_table(path: Path, option: str = "--data", expected: str = "a CSV/TSV/Parquet file"):
    """A table; errors name the option it came from and what that option takes."""
    import pandas as pd

    if not path.is_file():
        raise PipelineError(f"{option} {path}: no such file (expected {expected})")
    try:
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            if importlib.util.find_spec("pyarrow") is None:
                raise PipelineError(f"{option} {path}: reading Parquet needs pyarrow (pip install pyarrow, or this "
                                    "project's `parquet` extra)")
            return pd.read_parquet(path)
        return read_delimited(read_text_file(path, option), sniff=suffix in (".tsv", ".txt"))
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(f"{option} {path}: could not read it as a table ({type(error).__name__}: {error})") from None


def read_text_file(path: Path, option: str) -> str:
    """A text file as UTF-8, or as Latin-1 with a line saying so where it is not UTF-8 (as tables are read)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        print(f"      {option} {path} is not UTF-8: read as Latin-1", file=sys.stderr)
        return raw.decode("latin-1")


def read_delimited(text: str, sniff: bool):
    """A CSV, or (sniff) a TSV or text table with any separator. A CSV whose one column's name holds `;`, a tab
    or `|` was written with that separator (spreadsheets in many locales use `;`) and is read again with it."""
    import io

    import pandas as pd

    if sniff:
        return pd.read_csv(io.StringIO(text), sep=None, engine="python")
    frame = pd.read_csv(io.StringIO(text))
    if frame.shape[1] == 1:
        for separator in (";", "\t", "|"):
            if separator in str(frame.columns[0]):
                return pd.read_csv(io.StringIO(text), sep=separator)
    return frame


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_problem(path: Path) -> str | None:
    """Why PIL cannot decode `path`, or None. Decoded at an eighth of its size, as fastai's `verify_image`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft(image.mode, (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.load()
    except Exception as error:  # PIL raises many types for broken files
        return f"{type(error).__name__}: {error}".splitlines()[0][:160]
    return None


def on_every_core(function, items) -> list:
    """`function` over `items` in threads, one per core: for image decoding, which releases the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(function, items))


def image_problems(files: list[Path]) -> dict[Path, str]:
    """The files PIL cannot decode, with why."""
    return {path: problem for path, problem in zip(files, on_every_core(image_problem, files)) if problem}


def describe_problems(problems: dict[Path, str], shown: int = 3) -> str:
    examples = "; ".join(f"{path.name} ({problem})" for path, problem in list(problems.items())[:shown])
    return f"{len(problems)} unreadable image(s), e.g. {examples}"


def readable_training_images(files: list[Path], where: str) -> list[Path]:
    """Training images without the ones PIL cannot decode (a truncated download, a stray file named .jpg):
    they are skipped with a line that names them, never deleted."""
    problems = image_problems(files)
    if problems:
        if len(problems) == len(files):
            raise PipelineError(f"{where}: no readable images: {describe_problems(problems)}")
        print(f"      skipped {describe_problems(problems)} in {where}")
    return [path for path in files if path not in problems]


def digit_scenes_folder(count: int = 400, height: int = 64, width: int = 96, seed: int = 0) -> Path:
    """Segmentation scenes from scikit-learn's digits, in CamVid's layout, written once.

    Each canvas holds two to five handwritten digits at random positions and scales over a noisy,
    tinted background; every stroke pixel of a digit is labelled with that digit's class and the rest
    `background` (11 codes). `images/scene_<n>.png`, `labels/scene_<n>_P.png`, `codes.txt`, as the
    book's CamVid. Deterministic for a seed.
    """
    folder = cache_dir() / f"digit_scenes_{count}_{height}x{width}_seed{seed}"
    if folder.is_dir():
        return folder
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    with written_once(folder, "scenes-") as staging:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        (staging / "codes.txt").write_text("\n".join(["background", *DIGIT_NAMES]) + "\n")
        for n in range(count):
            tint = rng.uniform(0, 90, size=3)
            canvas = np.clip(tint + rng.normal(0, 12, size=(height, width, 3)), 0, 255)
            label = np.zeros((height, width), dtype=np.uint8)
            for _ in range(rng.integers(2, 6)):
                index = rng.integers(len(digits.images))
                side = int(rng.integers(height // 4, height * 7 // 12))
                stroke = Image.fromarray((digits.images[index] / 16 * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
                intensity = np.asarray(stroke, dtype=np.float64) / 255
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                colour = rng.uniform(150, 255, size=3)
                region = canvas[top:top + side, left:left + side]
                region[:] = region * (1 - intensity[..., None]) + colour * intensity[..., None]
                label[top:top + side, left:left + side][intensity > 0.45] = digits.target[index] + 1
            Image.fromarray(canvas.round().astype(np.uint8)).save(staging / "images" / f"scene_{n}.png")
            Image.fromarray(label).save(staging / "labels" / f"scene_{n}_P.png")
    return folder
