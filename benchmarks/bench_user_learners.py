"""Bring your own learner, measured: for each task, a fastai user's learner (tests/user_learners/, built in
its own process the way a user builds it and saved with `learn.export()`) goes through the three
commands README shows, each timed; the table gives the parity the verify stage recorded.

    python -m benchmarks.bench_user_learners [--tasks siamese unet text tabular] | tee benchmarks/results/LOG

Runs in a temporary BENTOML_HOME and folder; registers `<task>-user` there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import print_table, run_main, scratch_folder
from pipelines.bench import machine_line

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "user_learners"
PIPELINES = str(Path(sys.executable).parent / "pipelines")


def inputs(task: str, work: Path) -> tuple[list[str], Path, str]:
    """The script's arguments, the sample it writes, and how to describe the learner."""
    from pipelines.data import digit_scenes_folder, digits_image_folder
    from tests.helpers import digits_subset, synthetic_reviews

    user = work / task
    if task == "siamese":
        digits = digits_subset(digits_image_folder(), work / "digits", per_class=30)
        return ["siamese_notebook.py", str(digits), str(user)], user / "pairs.csv", \
            "the book's Siamese notebook code (__main__ classes), resnet18 body, 1 epoch on 300 digits"
    if task == "unet":
        return ["unet_user.py", str(digit_scenes_folder(count=40, seed=1)), str(user)], user / "sample", \
            "unet_learner(resnet18), 1 epoch on 40 digit scenes"
    if task == "text":
        reviews = work / "reviews.csv"
        synthetic_reviews(240).to_csv(reviews, index=False)
        return ["text_user.py", str(reviews), str(user)], user / "texts.txt", \
            "text_classifier_learner(AWD_LSTM, small), 1 epoch on 240 generated reviews"
    return ["tabular_user.py", str(user)], user / "records.csv", "tabular_learner([50, 20]), 2 epochs on penguins"


def run_timed(command: list[str]) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["siamese", "unet", "text", "tabular"])
    args = parser.parse_args()
    print(f"command: python -m benchmarks.bench_user_learners {' '.join(sys.argv[1:])}".rstrip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}, {machine_line()}")
    with scratch_folder("user-learners-") as work:
        measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> None:
    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    os.environ.setdefault("PIPELINES_CACHE", str(work / "cache"))
    rows = []
    for task in args.tasks:
        script, sample, learner = inputs(task, work)
        script[0] = str(SCRIPTS / script[0])
        build = run_timed([sys.executable, *script])
        folder = work / f"{task}-artifact"
        pkl = Path(script[-1]) / "export.pkl"
        export = run_timed([PIPELINES, "export", "--learner", str(pkl), "--sample", str(sample), "--output", str(folder)])
        verify = run_timed([PIPELINES, "verify", str(folder)])
        register = run_timed([PIPELINES, "register", str(folder), "--name", f"{task}-user"])
        parity = json.loads((folder / "parity.json").read_text())
        rows.append({
            "task": task, "learner": learner, "sample": sample.name,
            "parity cases": len(parity["cases"]),
            "max |Δlogit|": max(case["logits_max_abs_error"] for case in parity["cases"]),
            "argmax agreement": min(case["argmax_agreement"] for case in parity["cases"]),
            "preprocessing max abs": parity["preprocessing"]["max_abs_error"],
            "passed": parity["passed"], "build s": build, "export s": export, "verify s": verify,
            "register s": register,
        })
    print_table(f"Bring your own learner: export --learner, verify, register ({os.cpu_count()} CPUs)", rows)


if __name__ == "__main__":
    run_main(main)
