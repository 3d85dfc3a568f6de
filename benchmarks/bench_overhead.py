"""Serving overhead per endpoint: HTTP p50 (one sequential client on loopback) minus the in-process p50 of
the same handler call on the same input (decode, preprocessing and ONNX Runtime included), next to the
p50 of BentoML's do-nothing endpoint served the same way (the floor), all three timed in alternating rounds;
and next to the same-time floor: an echo endpoint of the same shape (JSON, one file or two) that works on the
CPU for as long as the endpoint's in-process call takes, so that what serving charges any endpoint for the
time it spends working (idle cores waking, on these VMs) is not counted as ours.

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

from benchmarks.common import add_server_env_option, require_all_models_registered, run_main, server_env


def checked(call):
    """The call, failing the benchmark on any answer other than 200 (an error is not a latency)."""
    def run(_inputs=None):
        response = call()
        if response is not None and getattr(response, "status_code", 200) != 200:
            raise SystemExit(f"request failed: {response.status_code} {response.text[:200]}")
        return response
    return run


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


def same_time_floor(route: str, echo_http, files: dict, busy_ms: float):
    """The echo request shaped like `route`'s (JSON, one file or two) whose handler works for `busy_ms`."""
    if route == "/siamese/predict":
        return lambda: echo_http.post("/echo_uploads_busy", files=files, data={"busy_ms": busy_ms})
    if route in ("/unet/segment", "/classifier/predict"):
        return lambda: echo_http.post("/echo_upload_busy", files={"image": files["image_a"]}, data={"busy_ms": busy_ms})
    return lambda: echo_http.post("/echo_busy", json={"x": 1, "busy_ms": busy_ms})


def same_time_pair(in_process_call, floor_call):
    """The in-process call, recording how long it takes, and the same-time floor's call, which works for the
    median of the in-process call's last 25 times (so both follow the machine through the run); and the
    work times the floor was asked for."""
    recent, asked = [], []

    def in_process(_inputs=None):
        begin = time.perf_counter()
        result = in_process_call()
        recent.append((time.perf_counter() - begin) * 1000)
        return result

    def floor():
        asked.append(statistics.median(recent[-25:]))
        return floor_call(asked[-1])

    return in_process, checked(floor), asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    add_server_env_option(parser)
    args = parser.parse_args()
    require_all_models_registered()

    import httpx

    from benchmarks.echo_service import WAIT_S
    from export.quantize import interleaved_ms
    from pipelines.bench import write_results
    from services.client import example_image, example_requests
    from tests.helpers import bentoml_server

    env = server_env(args.env)
    rounds = 10
    repeats = max(1, args.requests // rounds)
    rows = []
    # Both servers run at once and every endpoint is timed in rounds that alternate it with the echo
    # endpoint and the in-process call, so that all three see the same machine (on a 2-core VM the echo
    # floor alone measured 2.7 ms p50 in one run and 3.6 ms in another ten minutes later).
    with tempfile.TemporaryDirectory() as scratch, \
            bentoml_server("benchmarks.echo_service:Echo", env=env) as echo_url, \
            bentoml_server("services.pipelines:Pipelines", env=env, timeout=180) as url, \
            httpx.Client(base_url=echo_url) as echo_http, httpx.Client(base_url=url, timeout=60) as http:
        local = in_process_calls(Path(scratch))
        served = {route: (lambda call=call: call(http), local[route])
                  for route, call in example_requests(http.post("/models").json()).items()}
        files = {"image_a": ("a.png", example_image(seed=1)), "image_b": ("b.png", example_image(seed=2))}
        nothing = lambda: None  # noqa: E731  (the floors have no work to subtract)
        served |= {
            "floor: two files, BentoML endpoint, Path fields": (
                lambda: echo_http.post("/echo_files", files=files), nothing),
            "floor: two files, BentoML endpoint, UploadedFile fields": (
                lambda: echo_http.post("/echo_uploads", files=files), nothing),
            "floor: two files, mounted Starlette route": (
                lambda: echo_http.post("/mounted/echo_files", files=files), nothing),
            "two files after 5 ms of sleep, BentoML endpoint, UploadedFile fields": (
                lambda: echo_http.post("/echo_uploads_after_wait", files=files), lambda: time.sleep(WAIT_S)),
            "two files after 5 ms of sleep, mounted Starlette route": (
                lambda: echo_http.post("/mounted/echo_files_after_wait", files=files), lambda: time.sleep(WAIT_S)),
            "/siamese/predict on a mounted Starlette route": (
                lambda: echo_http.post("/mounted/siamese/predict", files=files), local["/siamese/predict"]),
        }
        for route, (over_http_call, in_process_call) in served.items():
            runs = {
                "echo": checked(lambda: echo_http.post("/echo", json={"x": 1})),
                "http": checked(over_http_call),
                "in-process": checked(in_process_call),
            }
            matched = route in local  # the endpoints, not the floors: their same-time floor too
            if matched:
                runs["in-process"], runs["same-time floor"], work_ms = same_time_pair(
                    runs["in-process"], lambda busy_ms, route=route: same_time_floor(route, echo_http, files, busy_ms)())
            samples = interleaved_ms(runs, None, rounds=rounds, repeats=repeats)
            echo, over_http, alone = (statistics.median(samples[name]) for name in ("echo", "http", "in-process"))
            row = {"endpoint": route, "HTTP p50 ms": over_http, "in-process p50 ms": alone,
                   "overhead ms": over_http - alone, "echo p50 ms": echo,
                   "overhead above echo ms": over_http - alone - echo,
                   "same-time floor: work ms": "-", "its overhead ms": "-", "overhead above it ms": "-"}
            if matched:
                floor_overhead = statistics.median(samples["same-time floor"]) - statistics.median(work_ms)
                row |= {"same-time floor: work ms": statistics.median(work_ms), "its overhead ms": floor_overhead,
                        "overhead above it ms": over_http - alone - floor_overhead}
            rows.append(row)
    title = (f"Serving overhead, one sequential client on loopback, {rounds * repeats} requests each, "
             f"interleaved with the echo endpoint and the in-process call "
             f"(server env: {env})")
    write_results("overhead", title, rows, None, [],
                  command="python -m benchmarks.bench_overhead " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    run_main(main)
