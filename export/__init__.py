"""Export stage: exportable module -> torch.onnx -> model.onnx, parity proof, manifest, report, model store."""
