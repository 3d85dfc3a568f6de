"""`bentoml build` of the single-task bentofiles: each Bento pins its registered model and ships no torch.
(The all-models Bento of bentofile.yaml and its GPU variant: tests/test_all_models_bento.py.)"""

import importlib

import bentoml
import pytest
import yaml

from services.registry import SERVED_TASKS
from tests.helpers import build_bento, check_container_context

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", sorted(SERVED_TASKS))
def test_task_bento_pins_its_model_without_torch(task, request):
    service = f"{task.capitalize()}Service"
    assert SERVED_TASKS[task].service.name == task and hasattr(importlib.import_module(f"services.{task}"), service)
    request.getfixturevalue(f"{task}_run")
    bento = build_bento(f"bentofile.{task}.yaml")
    assert [str(model.tag) for model in bento.info.all_models] == [str(bentoml.models.get(f"{task}:latest").tag)]
    with open(bento.path_of("env/python/requirements.txt")) as handle:
        assert "pandas" not in handle.read().lower()
    with open(bento.path_of("bento.yaml")) as handle:
        assert yaml.safe_load(handle)["service"] == f"services.{task}:{service}"
    check_container_context(bento)
