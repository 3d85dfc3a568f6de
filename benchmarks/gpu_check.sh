#!/usr/bin/env bash
# The project's GPU check: each task's train-and-export (fastai training on the GPU, ONNX export, parity
# proof) and the execution-provider guard, on a machine with an NVIDIA GPU. Run from the repository root:
#     OUT=/some/folder TASKS="siamese tabular unet" bash benchmarks/gpu_check.sh [extra train-and-export options]
# Wheels in .whl/ (fastai and friends, for a machine that has torch but no fastai) are installed first.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PIPELINES_CACHE=/tmp/pipelines-cache BENTOML_HOME=/tmp/pipelines-bentoml
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
python3 -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime', ort.__version__, ort.get_available_providers())"

status=0
for task in ${TASKS:-siamese tabular unet}; do
  echo "== 1. pipelines train-and-export $task (fastai on $(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'))"
  started=$(date +%s)
  python3 -m pipelines.cli train-and-export "$task" --no-register --output "$OUT/$task" "$@" 2>&1 \
    | tr '\r' '\n' | grep -vE "^Epoch [0-9]+/[0-9]+ :" ; task_status=${PIPESTATUS[0]}
  echo "train-and-export $task exit status $task_status after $(( $(date +%s) - started )) s"
  [ "$task_status" = 0 ] || status=$task_status
done

echo "== 2. provider guard and latency"
[ -f "$OUT/siamese/model.onnx" ] && python3 - "$OUT/siamese" <<'PY'
import sys, time
from pathlib import Path
import numpy as np, torch
from services.runtime import ProviderUnavailableError, create_session
from pipelines.registry import get_task
folder = Path(sys.argv[1])
try:
    session = create_session(folder / "model.onnx", provider="cuda")
    print("cuda session provider:", session.get_providers()[0])
except ProviderUnavailableError as error:
    print("cuda refused as designed:", error)
model = get_task("siamese").model_from_artifact(folder)
cpu = create_session(folder / "model.onnx", provider="cpu")
device = "cuda" if torch.cuda.is_available() else "cpu"
model = model.to(device)
for batch in (1, 16, 256):
    a = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    ta = torch.from_numpy(a).to(device)
    def eager():
        with torch.inference_mode():
            model(ta, ta)
        if device == "cuda":
            torch.cuda.synchronize()
    rows = {}
    for name, fn in ((f"PyTorch eager {device}", eager), ("ONNX Runtime CPU", lambda: cpu.run(None, {"image_a": a, "image_b": a}))):
        for _ in range(5):
            fn()
        samples = []
        for _ in range(30):
            t = time.perf_counter(); fn(); samples.append((time.perf_counter() - t) * 1000)
        rows[name] = float(np.median(samples))
    print(f"batch {batch:>3}: " + ", ".join(f"{k} p50 {v:.2f} ms" for k, v in rows.items()))
PY
rm -f "$OUT"/*/model.onnx "$OUT"/*/fastai_weights.pth "$OUT"/*/*.png "$OUT"/*/manifest.json  # only report.md and parity.json come back
exit $status
