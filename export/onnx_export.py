"""torch.onnx export of a task's exportable module to one self-contained model.onnx."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch

from export.config import OnnxConfig
from export.errors import OnnxExportFailedError, OnnxGraphError


def _dynamic_shapes(config: OnnxConfig) -> tuple[dict[int, torch.export.Dim], ...]:
    dims: dict[str, torch.export.Dim] = {}
    return tuple(
        {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in spec.dynamic_axes.items()}
        for spec in config.inputs
    )


EXPORTERS = ("dynamo", "torchscript")


def _run_exporter(exporter: str, module, example_inputs, config: OnnxConfig, path: Path) -> None:
    common = dict(input_names=config.input_names, output_names=config.output_names, opset_version=config.opset)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(
                module, example_inputs, str(path), dynamo=True, external_data=False,
                dynamic_shapes=_dynamic_shapes(config), optimize=True, verbose=False, **common,
            )
        else:
            dynamic_axes = {spec.name: dict(spec.dynamic_axes) for spec in (*config.inputs, *config.outputs)}
            torch.onnx.export(module, example_inputs, str(path), dynamo=False, dynamic_axes=dynamic_axes, **common)


def _summary(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = next((line for line in lines if "No ONNX function found" in line or "Unsupported" in line), None)
    return f"{type(error).__name__}: {(telling or (lines[0] if lines else ''))[:240]}"


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    config: OnnxConfig,
    path: Path,
    progress: Callable[[str], None] = lambda line: None,
) -> str:
    """Export `module` (eval mode, on the CPU) to `path`, check the file, return the exporter used.

    The task's exporter goes first; if it cannot convert the module (operator coverage differs between
    torch releases: torch 2.11's dynamo exporter has no `adaptive_max_pool2d`, 2.14's has), the other
    exporter is tried. Either way the parity check that follows decides whether the file is good.
    """
    module = module.eval().cpu()
    example_inputs = tuple(tensor.cpu() for tensor in example_inputs)
    path = Path(path)
    order = [config.exporter, *(e for e in EXPORTERS if e != config.exporter)]
    failures = []
    # Written and checked in a folder of its own, then moved over `path`: an export that fails leaves the
    # file already there (a verified model.onnx, say) as it was.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as staging:
        staged = Path(staging) / path.name
        for exporter in order:
            try:
                _run_exporter(exporter, module, example_inputs, config, staged)
            except Exception as error:  # torch.onnx raises many types across releases
                reason = _summary(error)
                failures.append(f"{exporter}: {reason}")
                progress(f"      the {exporter} exporter failed ({reason})")
                staged.unlink(missing_ok=True)
                continue
            check_onnx_file(staged, config)
            os.replace(staged, path)
            return exporter
    custom = custom_module_names(module)
    hint = f". Modules from outside torch and fastai in the model, the likely cause: {', '.join(custom)}" if custom else ""
    raise OnnxExportFailedError("no exporter could convert the model: " + "; ".join(failures) + hint)


KNOWN_LIBRARIES = ("torch.", "torchvision.", "fastai.", "pipelines.")


def custom_module_names(module: torch.nn.Module) -> list[str]:
    """Classes of the model's submodules that come from neither torch nor fastai (a user's own layers)."""
    names = {f"{type(m).__module__}.{type(m).__qualname__}" for m in module.modules()}
    return sorted(name for name in names if not name.startswith(KNOWN_LIBRARIES))


def check_onnx_file(path: Path, config: OnnxConfig) -> onnx.ModelProto:
    """The file is self-contained, passes the ONNX checker and has the declared inputs and outputs."""
    leftovers = sorted(p.name for p in path.parent.glob("*.data"))
    if leftovers:
        raise OnnxGraphError(f"export wrote external weight files {leftovers}; model.onnx must be self-contained")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise OnnxGraphError(f"initializer {tensor.name} refers to external data")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise OnnxGraphError(f"ONNX checker rejected the export: {error}") from None
    found_inputs = [i.name for i in model.graph.input]
    found_outputs = [o.name for o in model.graph.output]
    if found_inputs != config.input_names or found_outputs != config.output_names:
        raise OnnxGraphError(
            f"exported graph has inputs {found_inputs} and outputs {found_outputs}; "
            f"the task declares {config.input_names} and {config.output_names}"
        )
    for graph_input, spec in zip(model.graph.input, config.inputs):
        dims = graph_input.type.tensor_type.shape.dim
        for axis in spec.dynamic_axes:
            if dims[axis].HasField("dim_value"):
                raise OnnxGraphError(
                    f"input {spec.name} axis {axis} was fixed at {dims[axis].dim_value}, declared dynamic"
                )
    return model
