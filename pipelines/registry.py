"""Task registry: one entry per task; it feeds the CLI, the export stage and the tests."""

from __future__ import annotations

from pipelines.errors import PipelineError
from pipelines.tasks.base import Task
from pipelines.tasks.classifier import ClassifierTask
from pipelines.tasks.siamese import SiameseTask
from pipelines.tasks.tabular import TabularTask
from pipelines.tasks.text import TextTask
from pipelines.tasks.unet import UnetTask

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (SiameseTask, TabularTask, UnetTask, TextTask, ClassifierTask)
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise PipelineError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
