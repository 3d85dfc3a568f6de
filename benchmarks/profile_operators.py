"""Where the time goes: ONNX Runtime's own per-operator profile of model.onnx and model.int8.onnx, on the
inputs `pipelines bench` uses, in milliseconds per call summed by operator type.

    python -m benchmarks.profile_operators ARTIFACT [--threads 2] [--runs 10]

Sessions are created as the services create them (services.runtime.session_options), so the fused and
layout-transformed operators (QLinearConv, NhwcMaxPool, FusedConv...) are the ones served. Writes its
table and log under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.common import run_main


def operator_ms(model: Path, inputs: dict[str, np.ndarray], threads: int, runs: int) -> Counter:
    """Milliseconds per call by operator type, over the last `runs` of `runs + 3` calls."""
    from services.runtime import session_options

    with tempfile.TemporaryDirectory() as scratch:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 3):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    calls = sorted(event["ts"] for event in events if event.get("name") == "model_run")
    timed_from = calls[-runs]
    totals: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--top", type=int, default=8, help="operator types listed per input, by fp32 + int8 time")
    args = parser.parse_args()

    from pipelines.artifact import load_model_source
    from pipelines.bench import resolve_artifact, write_results
    from services.manifest import INT8_MODEL_FILE, MODEL_FILE

    folder = resolve_artifact(args.artifact)
    if not (folder / INT8_MODEL_FILE).is_file():
        raise SystemExit(f"{folder} has no {INT8_MODEL_FILE}: run `pipelines quantize {folder}` first")
    source = load_model_source(folder)
    task = source.task
    case = task.evaluation_case(task.parity_cases(source.learn, source.data))
    rows = []
    for label, inputs in task.bench_inputs(source.learn, case).items():
        fp32 = operator_ms(folder / MODEL_FILE, inputs, args.threads, args.runs)
        int8 = operator_ms(folder / INT8_MODEL_FILE, inputs, args.threads, args.runs)
        ranked = sorted(set(fp32) | set(int8), key=lambda op: -(fp32[op] + int8[op]))
        for operator in ranked[:args.top]:
            rows.append({"inputs": label, "operator": operator, "fp32 ms": fp32[operator], "int8 ms": int8[operator]})
        rows.append({"inputs": label, "operator": "all operators", "fp32 ms": sum(fp32.values()),
                     "int8 ms": sum(int8.values())})
    title = (f"{task.name} model {folder}: ONNX Runtime per-operator time per call, {args.threads} threads, "
             f"mean of {args.runs} profiled calls")
    write_results(f"operators_{task.name}", title, rows, None, [f"artifact: {folder}"],
                  command="python -m benchmarks.profile_operators " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    run_main(main)
