"""Training history across several fits (fastai's Recorder starts afresh at every fit)."""

from __future__ import annotations

import time
from typing import Callable

from export.report import TrainingSummary


class TrainingHistory:
    def __init__(self, learn):
        self.learn = learn
        self.rows: list[dict] = []
        self.batch_losses: list[float] = []
        self.started = time.time()

    def fit(self, stage: str, run_fit: Callable[[], None]) -> None:
        run_fit()
        recorder = self.learn.recorder
        names = [name for name in recorder.metric_names[1:] if name != "time"]
        for values in recorder.values:
            row = {"stage": stage, "epoch": len(self.rows)}
            row.update({name: float(value) for name, value in zip(names, values)})
            self.rows.append(row)
        self.batch_losses.extend(float(loss) for loss in recorder.losses)

    def summary(self, schedule: str, reason: str) -> TrainingSummary:
        final = {k: v for k, v in self.rows[-1].items() if k not in ("stage", "epoch")} if self.rows else {}
        return TrainingSummary(
            schedule=schedule, schedule_reason=reason, epochs=self.rows, batch_losses=self.batch_losses,
            final_metrics=final, seconds=time.time() - self.started,
        )
