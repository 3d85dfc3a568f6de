"""torch.onnx export of a task's exportable module to one self-contained model.onnx."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch

from export.config import OnnxConfig
from export.errors import OnnxGraphError


def _dynamic_shapes(config: OnnxConfig) -> tuple[dict[int, torch.export.Dim], ...]:
    dims: dict[str, torch.export.Dim] = {}
    return tuple(
        {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in spec.dynamic_axes.items()}
        for spec in config.inputs
    )


def export_onnx(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], config: OnnxConfig, path: Path) -> Path:
    """Export `module` (put in eval mode, on the CPU) and check the file against `config`."""
    module = module.eval().cpu()
    example_inputs = tuple(tensor.cpu() for tensor in example_inputs)
    path = Path(path)
    common = dict(input_names=config.input_names, output_names=config.output_names, opset_version=config.opset)
    captured = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured), torch.no_grad():
        warnings.simplefilter("ignore")
        if config.exporter == "dynamo":
            torch.onnx.export(
                module, example_inputs, str(path), dynamo=True, external_data=False,
                dynamic_shapes=_dynamic_shapes(config), optimize=True, verbose=False, **common,
            )
        else:
            dynamic_axes = {spec.name: dict(spec.dynamic_axes) for spec in (*config.inputs, *config.outputs)}
            torch.onnx.export(
                module, example_inputs, str(path), dynamo=False, dynamic_axes=dynamic_axes, **common,
            )
    check_onnx_file(path, config)
    return path


def check_onnx_file(path: Path, config: OnnxConfig) -> onnx.ModelProto:
    """The file is self-contained, passes the ONNX checker and has the declared inputs and outputs."""
    leftovers = [p.name for p in path.parent.glob(path.name + "*.data")] + [
        p.name for p in path.parent.glob("*.data")
    ]
    if leftovers:
        raise OnnxGraphError(f"export wrote external weight files {sorted(set(leftovers))}; model.onnx must be self-contained")
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
