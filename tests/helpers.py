"""Test helpers: a real `bentoml serve` process on a free loopback port, and small image files."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).parent / "bentoml")

# A Siamese model that trains in seconds: enough to prove the chain, not to be accurate.
TINY_SIAMESE_OPTIONS = dict(
    label_from="filename", label_pattern=r"^(.*)_\d+.jpg$", image_size=32, arch="resnet18", pretrained="no",
    frozen_epochs=1, unfrozen_lr=(1e-6, 1e-4), epochs=1, lr=3e-3, batch_size=32, seed=42, register=True,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerURL(str):
    """The base URL of a running server, with the PID of its `bentoml serve` process (its session leader)."""

    pid: int


@contextlib.contextmanager
def bentoml_server(target: str, env: dict | None = None, cwd: Path = REPO, log_path: Path | None = None, timeout: float = 90):
    """Start `bentoml serve TARGET` on 127.0.0.1, wait for /readyz, yield its URL (a ServerURL), stop it by PID."""
    port = free_port()
    log_path = log_path or Path(os.environ["BENTOML_HOME"]).parent / f"serve-{port}.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.pid = process.pid
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"bentoml serve not ready after {timeout} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def image_bytes(image, format: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save_args)
    return buffer.getvalue()


def digits_subset(source: Path, target: Path, per_class: int) -> Path:
    """A small copy of the embedded digits folder, `per_class` images of each class."""
    target.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for path in sorted(source.glob("*.jpg")):
        label = path.name.rsplit("_", 1)[0]
        if counts.get(label, 0) < per_class:
            shutil.copy2(path, target / path.name)
            counts[label] = counts.get(label, 0) + 1
    return target

TINY_TABULAR_OPTIONS = dict(
    data="penguins", valid_data=None, target=None, cat_names=None, cont_names=None, target_type="auto",
    layers="200,100", epochs=3, lr=1e-2, batch_size=64, seed=42, register=True,
)

TINY_UNET_OPTIONS = dict(
    arch="resnet18", pretrained="no", image_size=None, epochs=1, lr=3e-3, batch_size=8, seed=42, register=True,
)

TINY_TEXT_OPTIONS = dict(
    valid_data=None, text_col="text", label_col="label", pretrained="no", model_size="small", drop_mult=None,
    lm_epochs=0, epochs=1, lr=5e-3, batch_size=32, seed=42, register=True,
)


def synthetic_reviews(count: int, seed: int = 0):
    """Two classes of short reviews with their own words, plus the mess real text has (HTML, capitals,
    repeats, emoji), of lengths from a few to a few hundred tokens."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    words = {"good": "great lovely tasty fresh superb delicious wonderful fine".split(),
             "bad": "awful stale bland broken terrible soggy gross poor".split()}
    common = "the this it was and a of to with product coffee tea box bag I we".split()
    rows = []
    for n in range(count):
        label = "good" if n % 2 else "bad"
        size = int(rng.choice([5, 20, 60, 150, 300]))
        tokens = [str(rng.choice(words[label] if rng.random() < 0.3 else common)) for _ in range(size)]
        text = " ".join(tokens)
        if n % 5 == 0:
            text = text.replace(" it ", " IT ", 1) + " <br /><br />Really!!! 😀"
        if n % 7 == 0:
            text = text.capitalize() + " sooo " + " ".join([tokens[0]] * 4)
        rows.append((text, label))
    return pd.DataFrame(rows, columns=["text", "label"])


def build_bento(bentofile: str):
    """`bentoml build -f BENTOFILE` in the repository; the built Bento from the store."""
    import bentoml

    completed = subprocess.run(
        [BENTOML, "build", "-f", bentofile, "--output", "tag"], cwd=REPO, env=os.environ, capture_output=True,
        text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return bentoml.get(completed.stdout.strip().splitlines()[-1].replace("__tag__:", ""))


def check_container_context(bento, runtime: str = "onnxruntime") -> set[str]:
    """The Docker build context `bentoml build` writes: slim Python base, the serving port, a non-root
    user, and an install list with `runtime` (onnxruntime or onnxruntime-gpu, never both) and without
    torch or fastai; returns the names on that list. (No Docker engine runs here; `bentoml containerize`
    builds it elsewhere.)"""
    with open(bento.path_of("env/docker/Dockerfile")) as handle:
        dockerfile = handle.read()
    assert "FROM python:3.11-slim" in dockerfile
    assert "EXPOSE 3000" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] != "root"
    assert os.path.isfile(bento.path_of("env/docker/entrypoint.sh"))
    with open(bento.path_of("env/python/requirements.txt")) as handle:
        packages = [line.strip().lower() for line in handle if line.strip() and not line.startswith("#")]
    names = {package.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip() for package in packages}
    assert runtime in names
    assert not names & ({"onnxruntime", "onnxruntime-gpu"} - {runtime})
    assert not any(name.startswith(("torch", "fastai")) for name in names)
    return names

TINY_CLASSIFIER_OPTIONS = dict(
    image_size=32, arch="resnet18", pretrained="no", epochs=1, lr=3e-3, batch_size=32, seed=42, register=True,
)
