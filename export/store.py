"""Saving an artifact folder into the BentoML model store.

BentoML's `latest` is the newest model of a name, so registering only after parity passed is what
makes `latest` move only on a verified export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import bentoml

from services.manifest import MANIFEST_FILE, MODEL_FILE, PARITY_FILE


def register_model(task: str, artifact_dir: Path, labels: dict[str, str], metadata: dict) -> str:
    artifact_dir = Path(artifact_dir)
    missing = [name for name in (MODEL_FILE, MANIFEST_FILE, PARITY_FILE) if not (artifact_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"artifact folder {artifact_dir} lacks {', '.join(missing)}")
    with bentoml.models.create(task, labels=labels, metadata=metadata) as model:
        for item in artifact_dir.iterdir():
            if item.is_file() and item.suffix in {".onnx", ".json", ".md", ".png"}:
                shutil.copy2(item, model.path_of(item.name))
    return str(model.tag)
