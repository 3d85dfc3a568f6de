"""Timing and table helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(function, repeats: int, warmup: int = 3) -> list[float]:
    """Milliseconds per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextlib.contextmanager
def scratch_folder(prefix: str):
    """A temporary folder for one benchmark's runs and model store, removed when it ends, even on failure."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def row(name: str, batch: int, samples: list[float], unit: str = "items/s") -> dict:
    median = statistics.median(samples)
    return {"path": name, "batch": batch, "p50 ms": median, "p95 ms": float(np.percentile(samples, 95)),
            unit: batch * 1000 / median}


def print_table(title: str, rows: list[dict]) -> None:
    from export.report import markdown_table
    from pipelines.bench import cell

    print(f"\n{title}\n\n{markdown_table(rows, cell)}")


def log_table(name: str, title: str, rows: list[dict]) -> None:
    """Print the table and write it, with the command and the machine, to benchmarks/results/NAME_*.log."""
    import sys

    from pipelines.bench import write_results

    command = f"python -m benchmarks.{Path(sys.argv[0]).stem} {' '.join(sys.argv[1:])}".rstrip()
    write_results(name, title, rows, None, [], command=command)


def add_server_env_option(parser) -> None:
    parser.add_argument("--env", nargs="*", default=[], help="extra server environment, KEY=VALUE")


def server_env(pairs: list[str]) -> dict[str, str]:
    """The benchmarked server's environment: the CPU, and the `--env KEY=VALUE` pairs."""
    return {"PIPELINES_PROVIDER": "cpu", **dict(pair.split("=", 1) for pair in pairs)}


def serving_env(threads: int) -> dict[str, str]:
    """The served side of the latency tables: the CPU, the same threads, and the fp32 model the in-process
    rows measure (`pipelines bench` compares fp32 with int8)."""
    return {"PIPELINES_PROVIDER": "cpu", "PIPELINES_THREADS": str(threads), "PIPELINES_PRECISION": "fp32"}


def run_main(main) -> None:
    """A benchmark's `main`, where a problem with what it was asked to measure (a missing folder, no model in
    the store) ends it with one line and a non-zero exit, not a traceback."""
    from export.errors import ExportError
    from pipelines.errors import PipelineError

    try:
        main()
    except (PipelineError, ExportError) as error:
        raise SystemExit(f"error: {error}") from None


def require_all_models_registered() -> None:
    """The all-models Bento serves every task: stop before starting it (which would wait for a server
    that cannot start) when the store lacks one of its models."""
    import os

    import bentoml

    from pipelines.errors import PipelineError
    from services.loading import model_tag
    from services.registry import SERVED_TASKS

    missing = []
    for task in SERVED_TASKS:
        try:
            bentoml.models.get(model_tag(task))
        except bentoml.exceptions.NotFound:
            missing.append(model_tag(task))
    if missing:
        raise PipelineError(f"the BentoML store at {os.environ.get('BENTOML_HOME', '~/bentoml')} lacks "
                            f"{', '.join(missing)}; the all-models Bento serves every task: register them "
                            "(`pipelines train-and-export TASK`, or `pipelines register ARTIFACT`) or set BENTOML_HOME "
                            "to a store that has them")


def model_arguments(description: str, task: str):
    """The options every model benchmark takes, and the artifact folder to measure: --artifact, else the
    registered `<task>:latest` (whose manifest points at the run's folder for the fastai weights)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--artifact", type=Path, help=f"artifact folder of a train-and-export run [default: {task}:latest]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from pipelines.errors import PipelineError

    if args.artifact is None:
        import bentoml

        try:
            args.artifact = Path(bentoml.models.get(f"{task}:latest").path)
        except bentoml.exceptions.NotFound:
            raise PipelineError(f"no {task} model in the BentoML store: register one "
                                f"(`pipelines train-and-export {task}`) or pass --artifact FOLDER") from None
    elif not args.artifact.is_dir():
        raise PipelineError(f"--artifact {args.artifact}: no such folder")
    return args
