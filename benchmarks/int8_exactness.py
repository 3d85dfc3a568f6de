"""Does this CPU's int8 compute what the int8 file says? ONNX Runtime's fused int8 kernels (as served)
against the file's exact QDQ arithmetic (graph optimisations off: DequantizeLinear, float operator,
QuantizeLinear), and both against fp32, on the task's evaluation case.

    python -m benchmarks.int8_exactness ARTIFACT [ARTIFACT ...]

On CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's u8s8 kernels add pairs of products in 16 bits, which
8-bit weights can overflow; `pipelines quantize` writes 7-bit weights so that they cannot (parity.json
`int8.weight_bits`). Writes its table and log under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys

import onnxruntime as ort

from benchmarks.common import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from export.parity import case_outputs
    from export.quantize import judge_case
    from pipelines.artifact import load_model_source
    from pipelines.bench import resolve_artifact, write_results
    from services.loading import int8_verdict
    from services.manifest import INT8_MODEL_FILE, MODEL_FILE
    from services.runtime import create_session, session_options, this_machine

    rows = []
    for artifact in args.artifacts:
        folder = resolve_artifact(artifact)
        if not (folder / INT8_MODEL_FILE).is_file():
            raise SystemExit(f"{folder} has no {INT8_MODEL_FILE}: run `pipelines quantize {folder}` first")
        weight_bits = int8_verdict(folder).get("weight_bits") or 8
        source = load_model_source(folder)
        task = source.task
        case = task.evaluation_case(task.parity_cases(source.learn, source.data))
        exact_options = session_options(args.threads)
        exact_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sessions = {
            "fp32": create_session(folder / MODEL_FILE, provider="cpu", threads=args.threads),
            "int8 fused": create_session(folder / INT8_MODEL_FILE, provider="cpu", threads=args.threads),
            "int8 exact": ort.InferenceSession(str(folder / INT8_MODEL_FILE), exact_options,
                                               providers=["CPUExecutionProvider"]),
        }
        outputs = {name: case_outputs(session, case.inputs) for name, session in sessions.items()}
        for reference, compared in (("int8 exact", "int8 fused"), ("fp32", "int8 exact"), ("fp32", "int8 fused")):
            judged = judge_case(case.name, outputs[reference], outputs[compared], case.targets, case.metrics)
            rows.append({"artifact": str(folder), "weight bits": weight_bits, "reference": reference,
                         "compared": compared, "rows": judged.rows, "argmax agreement": f"{judged.argmax_agreement:.4f}",
                         "max abs Δlogit": judged.logits_max_abs_error,
                         **{f"{name} (reference / compared)": f"{values['fp32']:.4f} / {values['int8']:.4f}"
                            for name, values in judged.metrics.items()}})
    machine = this_machine()
    title = (f"int8 as this CPU's fused kernels compute it vs the int8 file's exact arithmetic vs fp32 "
             f"({machine['cpu']}, int8 kernels: {machine['int8_kernels']})")
    write_results("int8_exactness", title, rows, None, [f"artifacts: {' '.join(args.artifacts)}"],
                  command="python -m benchmarks.int8_exactness " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    run_main(main)
