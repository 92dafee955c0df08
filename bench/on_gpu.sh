#!/usr/bin/env bash
# The GPU checks in one run, about 8 minutes: kernels and GPU-sized models timed eager, as one
# CUDA graph and under torch.compile, each model's eager forward profiled into traces.zip
# (bench/gpu_measure.py measure), a CUDA calibration (`fxroof calibrate --device cuda`) and
# `fxroof measure` on ResNet-50, eager node by node and compiled. Output goes to $OUT (default gpu-out/; eight files,
# as many as a lent GPU hands back); `python bench/gpu_measure.py compare $OUT/measured.json
# --traces $OUT/traces.zip` then predicts every case anywhere, no GPU needed. Each step has its
# own time limit, so one that hangs does not take the others with it.
#
#     OUT=/some/dir bash bench/on_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
py=${PY:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit \
    --format=csv 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch, transformers; print(torch.__version__, torch.version.cuda, \
transformers.__version__)" 2>&1 | tee -a "$out/gpu.txt"
# the table's entry for the GPU at hand (a lent GPU may be an H100 or an H200); CHIP= overrides
chip=${CHIP:-$("$py" -c "import torch; from fxroof.measure.calibrate import table_entry; \
c = table_entry(torch.device('cuda', 0), None); print(c.name if c else '')")}
echo "chip: ${chip:-none in the table (fxroof measure calibrates this GPU instead)}" \
    | tee -a "$out/gpu.txt"
chip_args=(); [ -n "$chip" ] && chip_args=(--chip "$chip")
timeout 370 "$py" bench/gpu_measure.py measure "${chip_args[@]}" --out "$out/measured.json" --budget-s 280 \
    --traces "$out/traces.zip" 2>&1 | tee "$out/measure.txt"
timeout 120 "$py" -m fxroof calibrate --device cuda --out "$out/calibrated-cuda.json" \
    2>&1 | tee "$out/calibrate.txt"
timeout 45 "$py" -m fxroof measure models/resnet.py --set device=cuda --set batch=64 \
    --set dtype=bf16 "${chip_args[@]}" --repeat 10 --json "$out/fxroof-measure.json" \
    2>&1 | tee "$out/fxroof-measure.txt"
# the same model under torch.compile, beside the compiled prediction (its table in the same file)
timeout 45 "$py" -m fxroof measure models/resnet.py --set device=cuda --set batch=64 \
    --set dtype=bf16 "${chip_args[@]}" --repeat 10 --mode compiled \
    2>&1 | tee -a "$out/fxroof-measure.txt"
