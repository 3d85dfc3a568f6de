"""The chapter's questions about the vision_learner head and splitter, measured: concat vs average pooling,
fastai's default splitter vs one parameter group per ResNet block, each trained with the same data, seed,
epochs and learning rate, in this one process.

    python -m benchmarks.bench_classifier_heads [--data digits] [--epochs 6] [--arch resnet34] | tee benchmarks/results/LOG

Trains into a temporary folder (nothing registered). With `--data pets` and the internet it runs on the
book's Oxford-IIIT Pets with ImageNet weights (fine_tune), as the chapter does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import print_table, run_main, scratch_folder
from pipelines.bench import machine_line

CONFIGURATIONS = [
    {"head_pool": "concat", "splitter": "default"},
    {"head_pool": "avg", "splitter": "default"},
    {"head_pool": "concat", "splitter": "per-block"},
    {"head_pool": "avg", "splitter": "per-block"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=None, help="[default: the task's]")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(f"command: python -m benchmarks.bench_classifier_heads {' '.join(sys.argv[1:])}".rstrip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}, {machine_line()}")

    with scratch_folder("classifier-heads-") as work:
        measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> None:
    from pipelines.registry import get_task
    from pipelines.run import train

    task = get_task("classifier")

    rows = []
    for n, configuration in enumerate(CONFIGURATIONS):
        options = task.Options.from_mapping({"data": args.data, "epochs": args.epochs, "arch": args.arch,
                                             "seed": args.seed, **configuration})
        started = time.perf_counter()
        source = train(task, options, work / f"run{n}")
        seconds = time.perf_counter() - started
        metrics = source.summary.final_metrics
        parameters = sum(p.numel() for p in source.learn.model[1].parameters())
        rows.append({**configuration, "schedule": source.summary.schedule, "head parameters": parameters,
                     "valid accuracy": f"{metrics['accuracy']:.4f}", "valid loss": f"{metrics['valid_loss']:.4f}",
                     "train s": seconds})
    print_table(f"Classifier head and splitter on {args.data} ({args.arch}, seed {args.seed})", rows)


if __name__ == "__main__":
    run_main(main)
