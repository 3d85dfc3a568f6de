"""One Bento for every registered model: each task's public endpoints under /<task>/ on one port.

One service; every worker holds every task's ONNX Runtime session and answers any endpoint in its own
process. (Measured against an entry service composing one service per task, which used twice the memory
for 1.4-3x less throughput on 2 cores: README, results log, "Serving all four models"; that variant is
gone.) The class is assembled from the registry (services/registry.py): the endpoint mixins of the
tasks, and one pinned model per task (`<TASK>_MODEL_TAG` or `<task>:latest` at `bentoml build`).

- `Pipelines` (bentofile.yaml): on the CPU.
- `PipelinesOnGPU` (bentofile.gpu.yaml): the same, asking its platform for one GPU.
"""

from __future__ import annotations

import bentoml

from services.conventions import ServingConventions
from services.registry import SERVED_TASKS
from services.runtime import configured_request_threads


class AllModels:
    """What the assembled service adds to the tasks' endpoint mixins: the handlers and `/models`."""

    def __init__(self) -> None:
        self.handlers = {name: served.handler.from_store(getattr(self, f"{name}_model"))
                         for name, served in SERVED_TASKS.items()}

    @bentoml.api(route="/models")
    def models(self) -> dict:
        """Each task's model version, ONNX Runtime provider and precision, inputs, outputs, labels and
        metrics (also GET /models)."""
        return {task: handler.describe() for task, handler in self.handlers.items()}


def all_models_service(class_name: str, name: str, **config):
    """A BentoML service class with every registered task's endpoints and models."""
    models = {f"{task}_model": served.model for task, served in SERVED_TASKS.items()}
    bases = (AllModels, *(served.endpoints for served in SERVED_TASKS.values()))
    service_class = type(class_name, bases, {**models, "__module__": __name__,
                                             "__doc__": f"Every registered model on one port ({name})."})
    service = bentoml.service(name=name, traffic={"timeout": 120}, threads=configured_request_threads(),
                               **config)(service_class)
    service.add_asgi_middleware(ServingConventions)  # GET /models, one error shape
    return service


Pipelines = all_models_service("Pipelines", "pipelines")
PipelinesOnGPU = all_models_service("PipelinesOnGPU", "pipelines-gpu", resources={"gpu": 1})
