"""The task spec: everything about one task in one place (DESIGN.md, "one task, one spec")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click

from export.config import OnnxConfig
from export.parity import ParityCase, PreprocessingCheck
from export.report import TrainingSummary


@dataclass
class PreparedData:
    dls: Any
    source: str  # how a human would name the data: "digits (embedded, 1797 images)"
    details: dict = field(default_factory=dict)  # counts for people, and objects (file lists, frames) for the task

    def summary(self) -> dict:
        """The plain values of `details`, for the console and the manifest."""
        return {k: v for k, v in self.details.items() if isinstance(v, (str, int, float, bool))}


def valid_data_option() -> click.Option:
    """`--valid-data`: a separate validation file, for the tasks that read tables."""
    return click.Option(["--valid-data"], type=click.Path(path_type=Path), default=None,
                        help="A second file with the same columns used as the validation set [default: a random 20%].")


class Task(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    onnx_config: ClassVar[OnnxConfig]
    default_batch_size: ClassVar[int] = 64

    @classmethod
    def cli_options(cls) -> list[click.Option]:
        """Task-specific options, added to the common ones of `pipelines train-and-export TASK`."""
        return []

    @abstractmethod
    def prepare_data(self, options: dict) -> PreparedData: ...

    @abstractmethod
    def build_learner(self, data: PreparedData, options: dict): ...

    @abstractmethod
    def train(self, learn, options: dict) -> TrainingSummary: ...

    @abstractmethod
    def exportable_module(self, learn): ...

    @abstractmethod
    def example_inputs(self, learn) -> tuple: ...

    @abstractmethod
    def parity_cases(self, learn, data: PreparedData) -> list[ParityCase]: ...

    @abstractmethod
    def labels(self, learn) -> list[str]: ...

    @abstractmethod
    def preprocessing(self, learn): ...

    @abstractmethod
    def check_preprocessing(self, learn, data: PreparedData) -> PreprocessingCheck: ...

    def report_figures(self, learn, folder: Path) -> list[tuple[str, str]]:
        """Pictures for the report, saved into `folder`: (title, file name) pairs. None by default."""
        return []

    def save_weights(self, learn, folder: Path) -> Path:
        """The fastai model weights, beside the ONNX file, for users who go on in fastai."""
        import torch

        path = Path(folder) / "fastai_weights.pth"
        torch.save(learn.model.state_dict(), path)
        return path
