"""Saving a verified artifact folder into the BentoML model store.

BentoML's `latest` is the newest model of a name, so registering only what parity passed (checked
here against the very bytes of model.onnx) is what makes `latest` move only on a verified export.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from export.errors import InvalidModelNameError, NotVerifiedError
from export.parity import ParityReport
from services.manifest import (
    INT8_MODEL_FILE, MANIFEST_FILE, MODEL_FILE, PARITY_FILE, REPORT_FILE, Manifest, file_sha256,
)

# BentoML model names: lowercase letters, digits, '-', '_' and '.', starting with a letter or digit.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise InvalidModelNameError(f"model name {name!r}: use lowercase letters, digits, '-', '_' or '.', "
                               "starting with a letter or digit (at most 63 characters)")
    return name


def check_verified(artifact_dir: Path) -> dict:
    """The passing parity report of exactly the model.onnx in `artifact_dir`, else NotVerifiedError."""
    artifact_dir = Path(artifact_dir)
    missing = [name for name in (MODEL_FILE, MANIFEST_FILE) if not (artifact_dir / name).is_file()]
    if missing:
        raise NotVerifiedError(f"{artifact_dir} has no {' or '.join(missing)}; run `pipelines export` first")
    if not (artifact_dir / PARITY_FILE).is_file():
        raise NotVerifiedError(f"{artifact_dir / MODEL_FILE} was never verified; run `pipelines verify {artifact_dir}` first")
    report = ParityReport.read(artifact_dir / PARITY_FILE)
    if not report.get("passed"):
        raise NotVerifiedError(f"{artifact_dir / MODEL_FILE} failed its parity check (see {PARITY_FILE}); "
                               "nothing is registered")
    if report.get("model_sha256") != file_sha256(artifact_dir / MODEL_FILE):
        raise NotVerifiedError(f"{artifact_dir / MODEL_FILE} changed after it was verified; run "
                               f"`pipelines verify {artifact_dir}` again")
    return report


def int8_passed(artifact_dir: Path, report: dict) -> bool:
    """Whether model.int8.onnx passed its gate, as parity.json records, and is the file it judged."""
    section, path = report.get("int8") or {}, Path(artifact_dir) / INT8_MODEL_FILE
    return bool(section.get("passed")) and path.is_file() and section.get("sha256") == file_sha256(path)


def register_model(name: str, artifact_dir: Path, labels: dict[str, str], metadata: dict) -> tuple[str, list[str]]:
    """Returns the tag and the precisions registered: the int8 model goes in only when it passed its gate."""
    artifact_dir = Path(artifact_dir)
    check_model_name(name)
    report = check_verified(artifact_dir)
    Manifest.read(artifact_dir)  # a manifest the services can read
    import bentoml

    precisions = ["fp32", "int8"] if int8_passed(artifact_dir, report) else ["fp32"]
    labels = {**labels, "precision": "-".join(precisions)}
    files = [artifact_dir / name for name in (MODEL_FILE, MANIFEST_FILE, PARITY_FILE, REPORT_FILE)]
    if "int8" in precisions:
        files.append(artifact_dir / INT8_MODEL_FILE)
    files += sorted(artifact_dir.glob("*.png"))
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for item in files:
            if item.is_file():
                shutil.copy2(item, model.path_of(item.name))
    return str(model.tag), precisions
