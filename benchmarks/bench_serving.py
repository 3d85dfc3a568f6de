"""The all-models Bento under load: start-up time, memory of the whole process tree, and per endpoint the
latency of one client alone and the throughput and latency under concurrent clients.

    python -m benchmarks.bench_serving [--variants one-service one-service-2-workers]
                                       [--clients 32] [--requests 320] [--threads 0]

It serves the registered `<task>:latest` models of the current BENTOML_HOME (train them first with
`pipelines train-and-export <task>`), on a loopback port, and stops every server it starts. Every task
of the serving registry needs a request here (it refuses to run otherwise). Memory is read from /proc (Linux).
(The composed variant measured in README's results log, an entry service calling one service per task,
was removed after that measurement.)
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import require_all_models_registered, run_main


VARIANTS = {
    "one-service": ("services.pipelines:Pipelines", {}),
    "one-service-2-workers": ("services.pipelines:Pipelines", {"BENTOML_CONFIG_OPTIONS": "services.pipelines.workers=2"}),
}
REVIEW = ("I bought this coffee for the office and it was a great surprise: rich, smooth, never bitter, "
          "and the beans arrived fresh. The price is fair for the quality. Would buy again!")


def png_bytes(path: Path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def tabular_record() -> dict:
    """One plausible record of the registered tabular model: each column's first category or mean."""
    import bentoml

    from services.manifest import Manifest

    spec = Manifest.read(Path(bentoml.models.get("tabular:latest").path)).preprocessing
    record = {column: spec.means[column] for column in spec.cont_names}
    record.update({column: spec.categories[column][1] for column in spec.cat_names})
    return record


def endpoint_calls() -> dict:
    """Per endpoint, a function that sends one request with a requests.Session to a base URL."""
    from pipelines.data import digit_scenes_folder, digits_image_folder, image_files

    digits = image_files(digits_image_folder())
    first, second = digits[0].read_bytes(), digits[-1].read_bytes()
    scene = png_bytes(image_files(digit_scenes_folder(count=40, seed=1) / "images")[0])
    record = tabular_record()
    calls = {
        "/siamese/predict": lambda http, url: http.post(
            f"{url}/siamese/predict", files={"image_a": ("a.jpg", first), "image_b": ("b.jpg", second)}, timeout=60),
        "/unet/segment": lambda http, url: http.post(
            f"{url}/unet/segment", files={"image": ("scene.png", scene)}, timeout=60),
        "/text/classify": lambda http, url: http.post(f"{url}/text/classify", json={"text": REVIEW}, timeout=60),
        "/tabular/predict": lambda http, url: http.post(
            f"{url}/tabular/predict", json={"records": [record]}, timeout=60),
    }
    from services.registry import SERVED_TASKS

    missing = set(SERVED_TASKS) - {route.split("/")[1] for route in calls}
    if missing:
        raise SystemExit(f"no benchmark request for the served task(s) {', '.join(sorted(missing))}: add one here")
    return calls


def process_tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (bentoml serve and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    total_kb = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_kb / 1024


def alone(call, url: str, repeats: int) -> list[float]:
    import requests

    samples = []
    with requests.Session() as http:
        for index in range(repeats + 5):
            started = time.perf_counter()
            call(http, url).raise_for_status()
            if index >= 5:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["one-service"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=320, help="requests per endpoint under load")
    parser.add_argument("--repeats", type=int, default=30, help="requests per endpoint for one client alone")
    parser.add_argument("--threads", type=int, default=0, help="PIPELINES_THREADS (0: ONNX Runtime decides)")
    args = parser.parse_args()
    require_all_models_registered()

    from benchmarks.common import print_table
    from pipelines.bench import sweep
    from tests.helpers import bentoml_server

    calls = endpoint_calls()
    summary, endpoints = [], []
    for variant in args.variants:
        target, env = VARIANTS[variant]
        env = {**env, "PIPELINES_PROVIDER": "cpu", "PIPELINES_THREADS": str(args.threads)}
        started = time.perf_counter()
        with bentoml_server(target, env=env, timeout=180) as url:
            startup = time.perf_counter() - started
            idle_mb = process_tree_rss_mb(url.pid)
            for name, call in calls.items():
                single = alone(call, url, args.repeats)
                loaded = sweep(lambda http: call(http, ""), url, args.clients, args.requests, budget_s=600).summary()
                endpoints.append({
                    "variant": variant, "endpoint": name, "alone p50 ms": statistics.median(single),
                    f"{args.clients} clients req/s": loaded["req/s"], "p50 ms": loaded["p50 ms"],
                    "p95 ms": loaded["p95 ms"], "errors": loaded["errors"],
                })
            summary.append({"variant": variant, "target": target, "ready after s": startup,
                            "RSS idle MB": idle_mb, "RSS after load MB": process_tree_rss_mb(url.pid)})
    cpus = os.cpu_count()
    print_table(f"Start-up and memory (all processes of `bentoml serve`), {cpus} CPUs", summary)
    print_table(f"Per endpoint: one client alone ({args.repeats} requests), then {args.clients} concurrent clients "
                f"({args.requests} requests); PIPELINES_THREADS={args.threads}", endpoints)


if __name__ == "__main__":
    run_main(main)
