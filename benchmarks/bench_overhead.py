"""Serving overhead per endpoint: HTTP p50 (one sequential client on loopback) minus the in-process p50 of
the same handler call on the same input (decode, preprocessing and ONNX Runtime included), next to the
p50 of BentoML's do-nothing endpoint served the same way (the floor).

    python -m benchmarks.bench_overhead [--requests 300] [--env KEY=VALUE ...]

It serves the registered `<task>:latest` models of the current BENTOML_HOME on a loopback port and
stops every server it starts. Writes its table and log under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def sequential_ms(call, requests: int, warmup: int = 20) -> list[float]:
    samples = []
    for index in range(warmup + requests):
        started = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - started) * 1000
        if response is not None and getattr(response, "status_code", 200) != 200:
            raise SystemExit(f"request failed: {response.status_code} {response.text[:200]}")
        if index >= warmup:
            samples.append(elapsed)
    return samples


def in_process_calls(scratch: Path) -> dict:
    """Per endpoint, the handler call the endpoint makes, on the same input as the HTTP request."""
    import bentoml

    from services.client import EXAMPLE_REVIEW, example_image
    from services.registry import SERVED_TASKS

    handlers = {task: served.handler.from_store(bentoml.models.get(f"{task}:latest")) for task, served in SERVED_TASKS.items()}
    first, second = scratch / "a.png", scratch / "b.png"
    first.write_bytes(example_image(seed=1))
    second.write_bytes(example_image(seed=2))
    record = handlers["tabular"].example_record()
    return {
        "/siamese/predict": lambda: handlers["siamese"].predict(first, second),
        "/unet/segment": lambda: handlers["unet"].segment(first),
        "/text/classify": lambda: handlers["text"].classify([EXAMPLE_REVIEW]),
        "/tabular/predict": lambda: handlers["tabular"].predict([record]),
        "/classifier/predict": lambda: handlers["classifier"].classify([first], 3, "image"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--env", nargs="*", default=[], help="extra server environment, KEY=VALUE")
    args = parser.parse_args()

    import httpx

    from pipelines.bench import write_results
    from services.client import example_requests
    from tests.helpers import bentoml_server

    env = {"PIPELINES_PROVIDER": "cpu", **dict(item.split("=", 1) for item in args.env)}
    with bentoml_server("benchmarks.echo_service:Echo", env=env) as url, httpx.Client(base_url=url) as http:
        echo = statistics.median(sequential_ms(lambda: http.post("/echo", json={"x": 1}), args.requests))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        local = in_process_calls(Path(scratch))
        with bentoml_server("services.pipelines:Pipelines", env=env, timeout=180) as url, \
                httpx.Client(base_url=url, timeout=60) as http:
            calls = example_requests(http.post("/models").json())
            for route, call in calls.items():
                over_http = statistics.median(sequential_ms(lambda: call(http), args.requests))
                alone = statistics.median(sequential_ms(local[route], args.requests))
                rows.append({"endpoint": route, "HTTP p50 ms": over_http, "in-process p50 ms": alone,
                             "overhead ms": over_http - alone, "echo p50 ms": echo,
                             "overhead above echo ms": over_http - alone - echo})
    title = (f"Serving overhead, one sequential client on loopback, {args.requests} requests each "
             f"(server env: {env})")
    write_results("overhead", title, rows, None, [],
                  command="python -m benchmarks.bench_overhead " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
