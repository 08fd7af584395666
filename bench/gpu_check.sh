#!/usr/bin/env bash
# The one GPU proof, under 5 minutes on one GPU (more with several):
#   1. CUDA usable, or one line and exit 2 at once (a CPU-only torch or a driver mismatch would quietly train on
#      the CPU); versions and the GPU.
#   2. quick and default in bf16, quick in fp16 (grad scaler: skipped steps counted), each a real train.py run.
#   3. the sync-free step: 100 steps between log steps with no host read under
#      torch.cuda.set_sync_debug_mode("error") (tests/host_reads_check.py).
#   4. kill -9 mid-epoch and --resume auto with train.deterministic=true: model.safetensors byte-identical.
#   5. train.compile=true against eager (quick, bf16).
#   6. with 2 or more GPUs: a 2-process NCCL run, and a worker killed under --max_restarts 1.
#   7. one table: samples/s, TFLOP/s, MFU against the dense bf16 peak, peak memory, time to 99% val.
# Every command's whole output is kept in OUT/logs/; a failing check prints the end of its log and the script
# goes on, then exits 1 naming every failed check.
#   bash bench/gpu_check.sh [OUT]        (PEAK_TFLOPS=... for a GPU other than an H100/H200 SXM)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/mnist-sum-gpu}}
mkdir -p "$out/logs"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled TQDM_DISABLE=1
peak=${PEAK_TFLOPS:-989}  # dense bf16 tensor-core peak of the H100 / H200 SXM (NVIDIA's datasheet)
launch=(python3 -m accelerate.commands.launch --num_machines 1 --dynamo_backend no)
failed=()

cuda_usable() {
  python3 - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no usable GPU")
x = torch.ones(1024, 1024, device="cuda")
torch.cuda.synchronize()
assert (x @ x).sum().item() == 1024**3
EOF
}
cuda_usable >"$out/logs/cuda.log" 2>&1 || {
  echo "gpu_check: error: CUDA is not usable: $(tail -n 1 "$out/logs/cuda.log") (nothing was run)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/logs/gpu.log"
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN',
torch.backends.cudnn.version(), 'accelerate', accelerate.__version__, 'GPUs', torch.cuda.device_count())" | tee -a "$out/logs/gpu.log"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")

# check NAME COMMAND...: run it, its whole output into logs/NAME.log; on failure show the end of the log.
check() {
  local name=$1; shift
  local started=$SECONDS
  if "$@" >"$out/logs/$name.log" 2>&1; then
    echo "ok     $name ($((SECONDS - started)) s)"
  else
    echo "FAILED $name ($((SECONDS - started)) s), end of $out/logs/$name.log:"
    tail -n 25 "$out/logs/$name.log" | sed 's/^/    /'
    failed+=("$name")
  fi
}
train() {  # train RUN_NAME PRECISION [ARGS...]
  local name=$1 precision=$2; shift 2
  "${launch[@]}" --num_processes 1 --mixed_precision "$precision" train.py "$@" run.dir="$out/$name"
}

check quick-bf16 train quick-bf16 bf16 --config configs/quick.yaml
check default-bf16 train default-bf16 bf16
check quick-fp16 train quick-fp16 fp16 --config configs/quick.yaml
check quick-bf16-compiled train quick-bf16-compiled bf16 --config configs/quick.yaml train.compile=true

# 150 steps of the quick recipe with the default's moving average of the weights, log lines every 50: 100 steps
# recorded between them, syncs raising.
sync_free() {
  MNIST_SUM_SYNC_DEBUG=1 "${launch[@]}" --num_processes 1 --mixed_precision bf16 tests/host_reads_check.py \
    "$out/host_reads" --config configs/quick.yaml data.train_limit=38400 train.log_every=50 wandb.mode=disabled \
    train.ema_decay=0.999 \
    run.dir="$out/host-reads-run" &&
  python3 -c "import json,sys; s=json.load(open('$out/host_reads.0.json')); print(s); sys.exit(bool(s['seen']))"
}
check sync-free sync_free

kill_and_resume() {
  local args=(--config configs/quick.yaml train.deterministic=true checkpoint.every_steps=50)
  train resume-whole bf16 "${args[@]}" || return 1
  setsid "${launch[@]}" --num_processes 1 --mixed_precision bf16 train.py "${args[@]}" run.dir="$out/resume-killed" &
  local pid=$!
  until [ -e "$out/resume-killed/step_000100" ]; do kill -0 $pid 2>/dev/null || return 1; sleep 0.1; done
  kill -9 -- -$pid; wait $pid
  train resume-killed bf16 "${args[@]}" --resume auto || return 1
  cmp "$out/resume-whole/model.safetensors" "$out/resume-killed/model.safetensors" && echo "byte-identical"
}
check kill-and-resume kill_and_resume

if [ "$gpus" -ge 2 ]; then
  check nccl-2 "${launch[@]}" --multi_gpu --num_processes 2 --mixed_precision bf16 train.py --config configs/quick.yaml \
    run.dir="$out/nccl-2"
  restart() {
    setsid "${launch[@]}" --multi_gpu --num_processes 2 --max_restarts 1 --mixed_precision bf16 train.py \
      --config configs/quick.yaml checkpoint.every_steps=50 run.dir="$out/nccl-restart" &
    local pid=$! worker
    until [ -e "$out/nccl-restart/step_000100" ]; do kill -0 $pid 2>/dev/null || return 1; sleep 0.1; done
    worker=$(pgrep -f "train.py.*nccl-restart" | while read -r p; do grep -qz '^RANK=1$' /proc/$p/environ && echo $p; done | head -1)
    kill -9 "$worker"; wait $pid && test -e "$out/nccl-restart/results.json"
  }
  check nccl-restart restart
fi

python3 bench/table.py --peak-tflops "$peak" "$out"/quick-bf16 "$out"/quick-bf16-compiled "$out"/quick-fp16 \
  "$out"/default-bf16 2>"$out/logs/table.log" | tee "$out/table.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: error: ${#failed[@]} check(s) failed: ${failed[*]} (logs in $out/logs)" >&2
  exit 1
fi
echo "gpu_check: every check passed (logs in $out/logs)"
