#!/usr/bin/env bash
# The one prepared GPU run (issue: accuracy and speed): quick and default, bf16, one GPU, the data on the
# GPU, W&B off (the GPU image has no wandb). Installs nothing: it needs torch, accelerate, safetensors,
# pyyaml, tqdm, numpy, matplotlib and pillow, which the GPU image has. Prints one table.
#   bash bench/gpu_check.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/mnist-sum-gpu}}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"
for config in quick default; do
  python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16 \
    --dynamo_backend no train.py --config "configs/$config.yaml" wandb.mode=disabled run.dir="$out/$config" \
    2>&1 | tr '\r' '\n' | grep -E '^(mnist-sum|epoch [0-9]+/[0-9]+: val|test:)'
done
python3 bench/table.py "$out/quick" "$out/default" | tee "$out/table.md"
