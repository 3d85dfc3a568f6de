"""The all-models Bento under sustained mixed load: 32 clients for 60 s per round, every endpoint in turn
(a client's requests cycle through them), three rounds; errors, p50/p99 and the memory (RSS) of the
whole `bentoml serve` process tree at the start and after each round.

    python -m benchmarks.bench_load [--clients 32] [--seconds 60] [--rounds 3] [--env KEY=VALUE ...]

It serves the registered `<task>:latest` models of the current BENTOML_HOME on a loopback port and stops
the server it starts. Writes its table and log under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from benchmarks.common import add_server_env_option, require_all_models_registered, run_main, server_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    add_server_env_option(parser)
    args = parser.parse_args()
    require_all_models_registered()

    import httpx

    from benchmarks.bench_serving import process_tree_rss_mb
    from pipelines.bench import served_lines, sweep, write_results
    from services.client import example_requests
    from tests.helpers import bentoml_server

    rows = []
    env = server_env(args.env)
    with bentoml_server("services.pipelines:Pipelines", env=env, timeout=180) as url:
        models = httpx.get(f"{url}/models", timeout=30).json()
        calls = list(example_requests(models).values())
        for call in calls:  # one warm-up request per endpoint
            with httpx.Client(base_url=url, timeout=60) as http:
                call(http)
        start_mb = process_tree_rss_mb(url.pid)
        rows.append({"round": "start", "requests": 0, "req/s": 0.0, "p50 ms": 0.0, "p99 ms": 0.0, "errors": 0,
                     "RSS MB": start_mb, "RSS vs start": 1.0})
        turns = itertools.cycle(calls)
        mixed = lambda http: next(turns)(http)  # noqa: E731  (each request the next endpoint in turn)
        for number in range(1, args.rounds + 1):
            result = sweep(mixed, url, args.clients, requests=10**9, budget_s=args.seconds).summary()
            rss = process_tree_rss_mb(url.pid)
            rows.append({"round": str(number), "requests": result["requests"], "req/s": result["req/s"],
                         "p50 ms": result["p50 ms"], "p99 ms": result["p99 ms"], "errors": result["errors"],
                         "RSS MB": rss, "RSS vs start": rss / start_mb})
    title = (f"All-models Bento, {args.clients} clients x {args.seconds:g} s per round, mixed endpoints "
             f"({len(calls)} in turn), loopback")
    write_results("load", title, rows, None, served_lines(models),
                  command="python -m benchmarks.bench_load " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    run_main(main)
