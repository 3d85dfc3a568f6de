"""Serving layer: BentoML services over ONNX Runtime.

Nothing in this package imports fastai or torch: a deployed container stays small and loads no
pickles. Preprocessing is driven entirely by the model's manifest.json.
"""
