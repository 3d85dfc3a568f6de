"""Worker memory and throughput under concurrent large-image requests, one served setting after another:
the all-models Bento on a loopback port per setting, `--clients` clients sending `--requests` U-Net requests of
a `--size` random PNG, the worker's resident memory sampled during the burst (its peak) and after.

    python -m benchmarks.bench_memory --setting PIPELINES_RUNS_PER_MODEL=0 --setting PIPELINES_RUNS_PER_MODEL=2

It serves the registered `<task>:latest` models of the current BENTOML_HOME and stops every server it
starts. Writes its table and log under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import log_table, require_all_models_registered, run_main, server_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", default=[],
                        help="server environment of one run, KEY=VALUE[,KEY=VALUE]; repeat for each setting compared")
    parser.add_argument("--size", default="640x480", help="image WIDTHxHEIGHT")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96)
    args = parser.parse_args()
    require_all_models_registered()

    import httpx
    import psutil

    from services.client import example_image
    from tests.helpers import bentoml_server

    width, height = (int(part) for part in args.size.split("x"))
    image = example_image(width, height)
    rows = []
    for setting in args.setting or [""]:
        env = server_env([pair for pair in setting.split(",") if pair])
        before = {process.pid for process in psutil.process_iter()}
        with bentoml_server("services.pipelines:Pipelines", env=env, timeout=240) as url:
            workers = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
                       and "bentoml" in " ".join(p.info["cmdline"] or [])]
            resident = lambda: max(p.memory_info().rss for p in workers) / 2**20  # noqa: E731
            idle, peak, done = resident(), [0.0], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], resident())
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=args.clients)) as http, \
                    ThreadPoolExecutor(args.clients) as pool:
                started = time.perf_counter()
                codes = list(pool.map(lambda _: http.post("/unet/segment", files={"image": ("i.png", image)}).status_code,
                                      range(args.requests)))
                elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
            rows.append({"setting": setting or "(defaults)", "requests": len(codes),
                         "errors": sum(code != 200 for code in codes), "req/s": len(codes) / elapsed,
                         "worker RSS idle MiB": idle, "peak MiB": peak[0], "after MiB": resident()})
    log_table("memory", f"/unet/segment with a {args.size} PNG, {args.clients} concurrent clients, all-models Bento",
              rows)


if __name__ == "__main__":
    run_main(main)
