"""The Siamese chain for real: fastai training, torch.onnx export, ONNX Runtime parity, model store."""

import json
import os

import bentoml
import numpy as np
import onnx
import pytest

from export.errors import ShapeMismatchError, ToleranceExceededError
from export.onnx_export import export_onnx
from export.parity import ParityCase, check_parity, compare_case
from pipelines.tasks.base import PreparedData
from services.manifest import MODEL_FILE, Manifest
from services.runtime import create_session

pytestmark = pytest.mark.slow


def test_export_is_self_contained_with_named_dynamic_inputs(siamese_run):
    task, result = siamese_run
    files = sorted(p.name for p in result.output_dir.iterdir())
    assert not [name for name in files if name.endswith(".data")], files
    model = onnx.load(str(result.output_dir / MODEL_FILE))
    assert [i.name for i in model.graph.input] == ["image_a", "image_b"]
    assert [o.name for o in model.graph.output] == ["logits"]
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]
        assert dims[1].dim_value == 3
    assert model.opset_import[0].version == task.onnx_config.opset


def test_parity_report_covers_batches_sizes_and_preprocessing(siamese_run):
    task, result = siamese_run
    report = json.loads((result.output_dir / "parity.json").read_text())
    assert report["passed"] is True
    names = [case["name"] for case in report["cases"]]
    assert names[:2] == ["valid batch 1", "valid batch 7"]
    assert names[2].startswith("valid all")
    assert "random 72x88 batch 3" in names
    whole = report["cases"][2]
    assert whole["input_shapes"]["image_a"][0] == len(result.learn.dls.valid_ds)
    assert whole["metrics"]["accuracy"]["pytorch"] == whole["metrics"]["accuracy"]["onnx"]
    for case in report["cases"]:
        assert case["logits_max_abs_error"] <= task.onnx_config.tolerance.logits_atol
        assert case["argmax_agreement"] == 1.0
    assert report["preprocessing"]["compared"] >= 8
    assert report["preprocessing"]["max_abs_error"] <= 1e-6


def test_manifest_round_trip_and_contract(siamese_run):
    _, result = siamese_run
    manifest = Manifest.read(result.output_dir)
    assert manifest == result.manifest
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest
    assert manifest.labels == ["different", "same"]
    assert manifest.inputs[0].shape == ["batch", 3, "height", "width"]
    assert manifest.outputs[0].shape == ["batch", 2]
    assert manifest.preprocessing.height == manifest.preprocessing.width == 32
    assert manifest.preprocessing.mean == pytest.approx([0.485, 0.456, 0.406])
    assert manifest.provenance["seed"] == 42
    assert "fastai" in manifest.provenance["packages"]
    assert "accuracy" in manifest.metrics["training"]


def test_report_has_loss_plot_and_parity_table(siamese_run):
    _, result = siamese_run
    report = (result.output_dir / "report.md").read_text()
    assert "![loss curve](loss_curve.png)" in report
    assert (result.output_dir / "loss_curve.png").stat().st_size > 1000
    assert "| valid batch 1 |" in report


def test_registered_model_is_latest_and_holds_the_artifact(siamese_run):
    _, result = siamese_run
    latest = bentoml.models.get("siamese:latest")
    assert str(latest.tag) == result.tag
    for name in ("model.onnx", "manifest.json", "parity.json", "report.md", "loss_curve.png"):
        assert os.path.isfile(latest.path_of(name)), name


def test_tampered_export_fails_parity_with_a_typed_error(siamese_run, tmp_path):
    task, result = siamese_run
    model = onnx.load(str(result.output_dir / MODEL_FILE))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    values = onnx.numpy_helper.to_array(weight).copy()
    values *= 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    session = create_session(tampered, "cpu")
    report = check_parity("siamese", task.exportable_module(result.learn), session, task.onnx_config,
                          task.parity_cases(result.learn, PreparedData(None, "validation"))[:3])
    assert not report.passed
    with pytest.raises(ToleranceExceededError):
        report.raise_for_failure()


def test_shape_mismatch_is_a_typed_error(siamese_run):
    task, _ = siamese_run
    case = ParityCase("shapes", {"image_a": np.zeros((2, 3, 8, 8), np.float32)})
    result = compare_case(case, np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32), task.onnx_config.tolerance)
    assert not result.passed and "shape" in result.problems[0]
    from export.parity import ParityReport

    with pytest.raises(ShapeMismatchError):
        ParityReport("siamese", "CPUExecutionProvider", {}, [result]).raise_for_failure()


def test_torchscript_exporter_fallback_also_passes_parity(siamese_run, tmp_path):
    """The exporter that export_onnx falls back to (when the dynamo exporter of an older torch cannot
    convert an operator) yields a file that passes the same parity check."""
    import dataclasses

    task, result = siamese_run
    config = dataclasses.replace(task.onnx_config, exporter="torchscript")
    path = tmp_path / "model.onnx"
    module = task.exportable_module(result.learn)
    assert export_onnx(module, task.example_inputs(result.learn), config, path) == "torchscript"
    cases = task.parity_cases(result.learn, PreparedData(None, "validation"))
    report = check_parity("siamese", module, create_session(path, "cpu"), config, cases)
    assert report.passed, report.failures()
    assert report.cases[-1].input_shapes["image_a"] == [3, 3, 72, 88]


def test_an_export_that_fails_leaves_the_model_already_there_untouched(tmp_path):
    """Exporting again over a verified model.onnx (after a torch upgrade, say): when no exporter can convert
    the module, the file already there stays byte for byte, and no staging files are left behind."""
    import torch

    from export.errors import OnnxExportFailedError
    from pipelines.tasks.siamese import SiameseTask

    class Unexportable(torch.nn.Module):  # singular values have no ONNX operator
        def forward(self, image_a, image_b):
            return torch.linalg.svdvals(image_a[:, 0] - image_b[:, 0])[:, :2]

    path = tmp_path / MODEL_FILE
    path.write_bytes(b"the verified model")
    example = (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(OnnxExportFailedError, match="no exporter could convert"):
        export_onnx(Unexportable(), example, SiameseTask.onnx_config, path)
    assert path.read_bytes() == b"the verified model"
    assert sorted(item.name for item in tmp_path.iterdir()) == [MODEL_FILE]
