#!/usr/bin/env bash
# The GPU checks in one run (its steps capped at 9.5 minutes in all): single kernels against
# the expected-time model, the bundled workloads eager, compiled and replayed as CUDA graphs
# against the table's chip for that GPU, and a CUDA calibration. Output goes to $OUT (default
# gpu-out/); bench/README.md says where its figures are recorded. Each step has its own time
# limit, so one that hangs does not take the others with it.
#
#     OUT=/some/dir bash bench/on_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
py=${PY:-python}
mkdir -p "$out"
"$py" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/gpu.txt"
chip=$("$py" - <<'PY'
import sys; sys.path.insert(0, "bench")
import torch
from bench_kernels_gpu import CHIPS
name = torch.cuda.get_device_name()
print(next((c for key, c in CHIPS if key in name), "h100-sxm"))
PY
)
timeout 120 "$py" bench/bench_kernels_gpu.py --chip "$chip" --json "$out/kernels.json" \
    2>&1 | tee "$out/kernels.txt"
for mode in eager compiled cudagraphs; do
    timeout 110 "$py" bench/bench_accuracy.py --device cuda --mode "$mode" --chip "$chip" \
        --passes 1 2>&1 | tee "$out/accuracy-$mode.txt"
done
timeout 120 "$py" -m fxroof calibrate --device cuda --out "$out/calibrated-cuda.json" \
    2>&1 | tee "$out/calibrate.txt"
