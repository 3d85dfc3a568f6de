"""`pipelines bench`: side-by-side latency of one model's runtimes in one process, or of a running Bento
under concurrent clients. Each run prints one table, saves a PNG chart and writes a log (the command,
the machine, the table) under benchmarks/results/.

Runtimes are measured interleaved (round after round, every runtime once per round, the median of each
kept) so that a machine that slows down mid-run slows every runtime alike.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np

from pipelines.errors import PipelineError
from services.runtime import SPEED_FEATURES, cpu_features, cpu_identity, cpu_name

RESULTS = Path("benchmarks/results")


# ----- shared: tables, logs, charts ---------------------------------------------------------------
def cell(value) -> str:
    """Two decimals, or three significant digits for values too small for that (parity errors)."""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def machine_label(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """cpuN-BEST-VENDOR-fFAMILYmMODEL: the core count, the best speed feature and the CPU's vendor, family
    and model numbers, so that logs of different CPUs never share a name (cloud CPUs often call themselves
    just "AMD EPYC", and an Ice Lake Xeon and a Zen 5 EPYC have the same best feature)."""
    _, features = cpu_features(cpuinfo)
    best = features[0].replace("_", "") if features else platform.machine()
    identity = cpu_identity(cpuinfo)
    return f"cpu{os.cpu_count()}-{best}" + (f"-{identity}" if identity else "")


def machine_line() -> str:
    import onnxruntime

    model, features = cpu_features()
    return (f"machine: {cpu_name({'cpu': model, 'cpu_id': cpu_identity()})}, {os.cpu_count()} CPUs ({', '.join(features) or 'none of ' + '/'.join(SPEED_FEATURES)}), "
            f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")


def write_results(name: str, title: str, rows: list[dict], chart: Callable[[Path], None] | None, notes: list[str],
                  command: str | None = None, results: Path = RESULTS) -> Path:
    """Print the table, and write it with the command and the machine to RESULTS/NAME_*.log, with the
    chart beside it as .png."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"{name}_{machine_label()}_{dt.datetime.now().strftime('%Y-%m-%d_%H%M%S')}"
    from export.report import markdown_table

    table = markdown_table(rows, cell)
    command = command or f"pipelines {' '.join(shlex.quote(a) for a in sys.argv[1:])}"
    lines = [f"command: {command}", machine_line(),
             f"date: {dt.datetime.now().isoformat(timespec='seconds')}", *notes, "", title, "", table, ""]
    stem.with_suffix(".log").write_text("\n".join(lines))
    click.echo(f"\n{title}\n\n{table}\n")
    click.echo(f"log: {stem.with_suffix('.log')}")
    if chart is not None:
        chart(stem.with_suffix(".png"))
        click.echo(f"chart: {stem.with_suffix('.png')}")
    return stem.with_suffix(".log")


def bar_chart(path: Path, rows: list[dict], group: str, series: str, value: str, title: str) -> None:
    from export.report import pyplot

    plt = pyplot()
    groups = list(dict.fromkeys(row[group] for row in rows))
    names = list(dict.fromkeys(row[series] for row in rows))
    width = 0.8 / max(1, len(names))
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(names)) / 2), 4))
    for index, name in enumerate(names):
        values = [next((row[value] for row in rows if row[group] == g and row[series] == name), 0) for g in groups]
        axis.bar([i + index * width for i in range(len(groups))], values, width, label=name)
    axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], groups)
    axis.set_ylabel(value)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----- one model, several runtimes ----------------------------------------------------------------
@dataclass
class Runtime:
    name: str
    run: Callable[[dict[str, np.ndarray]], object]


@dataclass
class ModelUnderTest:
    task: object
    folder: Path  # the artifact folder (fastai weights, model.onnx and model.int8.onnx)
    learn: object
    data: object
    runtimes: list[Runtime] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)  # other exported forms, measured as baselines too


def resolve_artifact(target: str) -> Path:
    """An artifact folder, or a model in the BentoML store (NAME:VERSION or NAME) whose manifest names it."""
    from pipelines.artifact import SOURCE_FILE
    from services.manifest import Manifest

    path = Path(target)
    if path.is_dir():
        if (path / SOURCE_FILE).is_file():
            return path
        return Path(Manifest.read(path).provenance["artifact_dir"])
    import bentoml

    try:
        stored = bentoml.models.get(target)
    except (bentoml.exceptions.NotFound, ValueError):  # ValueError: not even a valid tag (a missing path, say)
        raise PipelineError(f"{target}: neither an artifact folder nor a model in the BentoML store") from None
    folder = Path(Manifest.read(Path(stored.path)).provenance["artifact_dir"])
    if not folder.is_dir():
        raise PipelineError(f"{target} was made from {folder}, which is not on this machine (the fastai weights are there)")
    return folder


def torch_runtime(name: str, module, names: list[str]) -> Runtime:
    import torch

    module = module.eval()

    def run(inputs):
        with torch.inference_mode():
            return module(*(torch.from_numpy(inputs[n]) for n in names))

    return Runtime(name, run)


def onnx_runtime(name: str, path: Path, threads: int) -> Runtime:
    from export.parity import session_output
    from services.runtime import create_session

    return Runtime(name, session_output(create_session(path, provider="cpu", threads=threads)))


def openvino_runtime(path: Path, threads: int) -> Runtime | None:
    """OpenVINO's CPU runtime on the same ONNX file (bf16 on AMX by its default hint), as served with
    PIPELINES_PROVIDER=openvino; None where OpenVINO is not installed."""
    from export.parity import session_output
    from services.runtime import ProviderUnavailableError, create_session

    try:
        session = create_session(path, provider="openvino", threads=threads)
    except ProviderUnavailableError:
        return None
    return Runtime(f"OpenVINO CPU ({session.inference_precision}) on {path.name}", session_output(session))


def load_model_under_test(target: str, threads: int, openvino: bool) -> ModelUnderTest:
    import torch

    from export.onnx_export import export_onnx
    from pipelines.artifact import load_model_source
    from services.manifest import INT8_MODEL_FILE, MODEL_FILE

    folder = resolve_artifact(target)
    source = load_model_source(folder)
    task, learn = source.task, source.learn
    torch.set_num_threads(threads)
    names = task.onnx_config.input_names
    model = ModelUnderTest(task, folder, learn, source.data)
    model.runtimes.append(torch_runtime("fastai/PyTorch eager", task.reference_module(learn), names))
    for label, module in task.bench_variants(learn).items():
        # the session keeps the graph in memory, so the exported file goes once the session exists
        with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
            exported = Path(scratch) / MODEL_FILE
            export_onnx(module, task.example_inputs(learn), task.onnx_config_for(learn), exported)
            model.runtimes.append(onnx_runtime(f"ONNX Runtime fp32, {label}", exported, threads))
        model.variants.append(label)
    model.runtimes.append(onnx_runtime("ONNX Runtime fp32", folder / MODEL_FILE, threads))
    if (folder / INT8_MODEL_FILE).is_file():
        model.runtimes.append(onnx_runtime("ONNX Runtime int8", folder / INT8_MODEL_FILE, threads))
    if openvino:
        # on model.int8.onnx, OpenVINO runs the quantized convolutions in int8 itself (its low-precision
        # transformations read the QDQ pairs): the bar for "faster than ONNX Runtime int8"
        files = [name for name in (MODEL_FILE, INT8_MODEL_FILE) if (folder / name).is_file()]
        references = [openvino_runtime(folder / name, threads) for name in files]
        if None in references:
            click.echo("      OpenVINO is not installed (pip install openvino): its reference rows are left out")
        else:
            model.runtimes += references
    return model


def bench_model(target: str, threads: int, rounds: int, repeats: int, budget_s: float, openvino: bool,
                results: Path = RESULTS) -> Path:
    from export.quantize import interleaved_ms

    model = load_model_under_test(target, threads, openvino)
    task = model.task
    case = task.evaluation_case(task.parity_cases(model.learn, model.data))
    rows = []
    for label, inputs in task.bench_inputs(model.learn, case).items():
        click.echo(f"      {label}: {len(model.runtimes)} runtimes, {rounds} interleaved rounds of {repeats}")
        samples = interleaved_ms({runtime.name: runtime.run for runtime in model.runtimes}, inputs, rounds, repeats,
                                 budget_s)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        baselines = {"ORT fp32": medians["ONNX Runtime fp32"], **{
            f"ORT fp32 {variant.split(',')[0]}": medians[f"ONNX Runtime fp32, {variant}"] for variant in model.variants},
            **({"ORT int8": medians["ONNX Runtime int8"]} if "ONNX Runtime int8" in medians else {})}
        batch = len(next(iter(inputs.values())))
        for runtime in model.runtimes:
            median = medians[runtime.name]
            rows.append({"inputs": label, "runtime": runtime.name, "p50 ms": median,
                         "p95 ms": float(np.percentile(samples[runtime.name], 95)), "items/s": batch * 1000 / median,
                         **{f"vs {name}": baseline / median for name, baseline in baselines.items()}})
    title = (f"{task.name} model {model.folder}: latency per call, {threads} threads, interleaved rounds "
             f"(items/s counts rows of the batch; 'vs X' > 1: faster than X)")
    return write_results(
        f"bench_{task.name}", title, rows,
        lambda path: bar_chart(path, rows, "inputs", "runtime", "p50 ms", title[:110]),
        [f"threads: {threads} (torch.set_num_threads and ONNX Runtime intra-op)", f"artifact: {model.folder}"],
        results=results,
    )


# ----- a running Bento under concurrent clients ---------------------------------------------------
def served_models(url: str) -> dict[str, dict]:
    """What GET /models says is served (POST for Bentos built before GET existed)."""
    import httpx

    try:
        response = httpx.get(f"{url}/models", timeout=30)
        if response.status_code == 405:
            response = httpx.post(f"{url}/models", timeout=30)
    except httpx.TransportError as error:
        raise PipelineError(f"cannot reach {url}: {type(error).__name__}; is the Bento running?") from None
    if response.status_code != 200:
        raise PipelineError(f"{url}/models answered HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


@dataclass
class Sweep:
    """What one server answered at one concurrency: each request's latency, the errors, the wall time."""
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    def add(self, other: "Sweep") -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.elapsed += other.elapsed

    def summary(self) -> dict:
        done, latencies = len(self.latencies), self.latencies
        return {"requests": done, "req/s": done / self.elapsed if self.elapsed else 0.0,
                "p50 ms": statistics.median(latencies) if latencies else float("nan"),
                "p95 ms": float(np.percentile(latencies, 95)) if latencies else float("nan"),
                "p99 ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
                "errors": self.errors}


def sweep(call: Callable, url: str, clients: int, requests: int, budget_s: float) -> Sweep:
    """`requests` calls (at most `budget_s` seconds) from `clients` concurrent clients, each on its own
    keep-alive connection."""
    import httpx

    result = Sweep()
    lock = threading.Lock()
    remaining = iter(range(requests))
    deadline = time.perf_counter() + budget_s

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < deadline:
                with lock:
                    if next(remaining, None) is None:
                        return
                started = time.perf_counter()
                try:
                    status = call(http).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    result.latencies.append((time.perf_counter() - started) * 1000)
                    result.errors += status != 200

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    result.elapsed = time.perf_counter() - started
    return result


def bench_url(urls: tuple[str, ...], concurrency: tuple[int, ...], requests: int, budget_s: float,
              endpoints: tuple[str, ...], rounds: int = 1, results: Path = RESULTS) -> Path:
    """Each endpoint at each concurrency, on one server or several (their settings compared: the servers
    take turns in `rounds` rounds, so that all of them see the same machine)."""
    from services.client import example_requests

    urls = tuple(url.rstrip("/") for url in urls)
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise PipelineError(f"--url {', '.join(repeated)} given more than once: compare different servers")
    models = {url: served_models(url) for url in urls}
    calls = {url: example_requests(models[url]) for url in urls}
    common = [name for name in calls[urls[0]] if all(name in calls[url] for url in urls)]
    if endpoints:
        unknown = sorted(set(endpoints) - set(common))
        if unknown:
            raise PipelineError(f"not served at {', '.join(urls)}: {', '.join(unknown)} (served: {', '.join(common)})")
        common = list(endpoints)
    rounds = rounds if len(urls) > 1 else 1
    rows = []
    for name in common:
        for clients in concurrency:
            click.echo(f"      {name}: {clients} concurrent clients" + (f", {rounds} rounds" if rounds > 1 else ""))
            totals = {url: Sweep() for url in urls}
            for _ in range(rounds):
                for url in urls:
                    totals[url].add(sweep(calls[url][name], url, clients, max(1, requests // rounds), budget_s / rounds))
            rows += [{**({"server": url} if len(urls) > 1 else {}), "endpoint": name, "clients": clients,
                      **total.summary()} for url, total in totals.items()]
    title = (f"{', '.join(urls)}: {requests} requests (at most {budget_s:g} s) per endpoint and concurrency"
             + (f" and server, the servers in {rounds} alternating rounds" if len(urls) > 1 else ""))
    chart_rows = [{**row, "endpoint": " ".join(str(row[key]) for key in ("endpoint", "server") if key in row)}
                  for row in rows]
    return write_results(
        "bench_url", title, rows,
        lambda path: bar_chart(path, chart_rows, "endpoint", "clients", "req/s", title[:110]),
        [f"url: {url}" for url in urls]
        + [line for url in urls for line in served_lines(models[url], f" at {url}" if len(urls) > 1 else "")],
        results=results,
    )


def served_lines(models: dict[str, dict], where: str = "") -> list[str]:
    """For a log: each served model with the settings it is served with (from `/models`)."""
    return [f"served{where}: {task}: {info['model']}, {info['provider']}, {info.get('precision', 'fp32')}, "
            f"batching concurrent requests: {info.get('batching_concurrent_requests', False)}, "
            f"request threads: {info.get('request_threads', 1)}" for task, info in models.items()]
