#!/usr/bin/env bash
# The one GPU proof, planned at 8 minutes on one H200 (a 10-minute call), on the GPU machine's own Python with
# this working tree on PYTHONPATH (nothing installed; W&B disabled, the bundled IDX data):
#   1. versions, driver and nvidia-smi first; then CUDA usable, or one line and exit 2 (a CPU-only torch or a
#      driver mismatch would quietly train on the CPU).
#   2. quick and default in bf16, quick in fp16 (grad scaler: skipped steps counted), each a real train.py run,
#      judged by its results.json: device cuda, the precision asked for, quick >= 99% and default >= 99.6% on
#      both heads, fp16 within 0.2% of bf16.
#   3. the sync-free step: 100 steps between log steps with no host read under
#      torch.cuda.set_sync_debug_mode("error") (tests/host_reads_check.py), in bf16 and in fp16 (its grad scaler).
#   4. kill -9 mid-epoch and --resume auto with train.deterministic=true: model.safetensors byte-identical (every
#      checkpoint kept, so the kill's moment cannot be pruned away); on a mismatch, the first logged step whose
#      train loss differs.
#   5. with 2 or more GPUs: a 2-process NCCL run, and a worker killed under --max_restarts 1 (else SKIPPED).
#   6. last, train.compile=true against eager (quick, bf16): within 0.2%.
#   7. one table of the runs that finished: samples/s, TFLOP/s, MFU against the dense bf16 peak, peak memory.
# Each check runs under its own time limit in its own process group (killed, with anything it started that
# names the scratch folder, and reported TIMEOUT; the rest go on), and is skipped when the script's budget (GPU_CHECK_BUDGET_S, default 480 s) has no room left for it.
# Everything is written to a scratch folder and packed at exit into OUT/gpu_check.tar.gz, beside OUT/table.md
# and OUT/summary.txt (three files); the summary is printed last. A rerun overwrites them.
#   bash bench/gpu_check.sh [OUT]        (PEAK_TFLOPS=... for a GPU other than an H100/H200 SXM)
#   bash bench/gpu_check.sh --cpu [OUT]  the dress rehearsal: every stage a CPU can run, through the same limits,
#                                        judges, archive and table (tiny runs; fp16 rehearsed in fp32, bf16 too where
#                                        the CPU emulates it; no sync-debug mode, the two-process checks over gloo);
#                                        tests/test_gpu_check.py runs it
set -uo pipefail
set -m  # each background check gets its own process group, so a timeout kills all of it
cd "$(dirname "$0")/.." || exit 2
cpu=0
if [ "${1:-}" = --cpu ]; then cpu=1; shift; fi
out=${1:-${OUT:-/tmp/mnist-sum-gpu}}
mkdir -p "$out"
scratch=$(mktemp -d)
mkdir -p "$scratch/logs"
summary="$scratch/summary.txt"
pack() {
  cp "$summary" "$out/summary.txt" 2>/dev/null
  [ -f "$scratch/table.md" ] && cp "$scratch/table.md" "$out/table.md"
  tar czf "$out/gpu_check.tar.gz" -C "$scratch" . 2>/dev/null
  rm -rf "$scratch"
}
trap pack EXIT
say() { echo "$@" | tee -a "$summary"; }

export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled TQDM_DISABLE=1
peak=${PEAK_TFLOPS:-989}  # dense bf16 tensor-core peak of the H100 / H200 SXM (NVIDIA's datasheet)
budget=${GPU_CHECK_BUDGET_S:-480}
launch=(python3 -m accelerate.commands.launch --num_machines 1 --dynamo_backend no)
failed=() skipped=() passed=()
# What each stage trains, and what its result must show. The rehearsal shrinks the runs, not the stages: the
# same checks, limits and judges, with floors that tiny runs reach and the CPU as the device they must name.
device=cuda bf16=bf16 half=fp16 quick_floor=0.99 default_floor=0.996 gap=0.002
quick=(--config configs/quick.yaml) default=(--config configs/default.yaml) resume_limit=() sync_debug=1
if [ $cpu -eq 1 ]; then
  peak=${PEAK_TFLOPS:-1}  # nominal: the rehearsal proves the table, not a CPU's MFU
  export CUDA_VISIBLE_DEVICES=  # the CPU, also on a machine with a GPU (accelerate's --cpu refuses --multi_gpu)
  device=cpu half=no quick_floor=0.95 default_floor=0.8 gap=0.02 sync_debug=0
  quick+=(data.train_limit=16384 train.epochs=1) default+=(data.train_limit=16384 train.epochs=1)
  # A CPU without bf16 instructions (AVX512-BF16, AMX-BF16; ARM's BF16) emulates it about 7x slower than fp32
  # (docs/benchmarks.md), which made this rehearsal CI's longest step: there the bf16 stages are rehearsed in
  # fp32, as fp16's is everywhere (bf16 autocast on the CPU is tested in tests/test_train_e2e.py).
  grep -qwE 'avx512_bf16|amx_bf16|bf16' /proc/cpuinfo 2>/dev/null || bf16=no
  resume_limit=(data.train_limit=19200)  # 75 steps an epoch, two: step_000100 falls inside the second
fi

{ if command -v nvidia-smi >/dev/null; then nvidia-smi | head -n 15; else echo "nvidia-smi: not found"; fi
  python3 -c "import sys, torch, accelerate; print('python', sys.version.split()[0], 'torch', torch.__version__,
'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(), 'accelerate', accelerate.__version__,
'GPUs', torch.cuda.device_count())" 2>&1; } | tee "$scratch/logs/versions.log"
if [ $cpu -eq 1 ]; then
  say "gpu_check --cpu: the dress rehearsal on the CPU (tiny runs; what needs CUDA is SKIPPED)"
else
python3 - >"$scratch/logs/cuda.log" 2>&1 <<'EOF' || { say "gpu_check: error: CUDA is not usable: $(tail -n 1 "$scratch/logs/cuda.log") (nothing was run; bench/gpu_check.sh --cpu rehearses it on a CPU)"; exit 2; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no usable GPU")
x = torch.ones(1024, 1024, device="cuda")
torch.cuda.synchronize()
assert (x @ x).sum().item() == 1024**3
EOF
fi
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ $cpu -eq 1 ] && gpus=2  # two CPU processes over gloo stand in for two GPUs over NCCL

# check NAME LIMIT_S COMMAND...: run it in its own process group, its whole output into logs/NAME.log, killed at
# LIMIT_S (TIMEOUT); skipped when the budget has no LIMIT_S left. On failure, the end of its log.
check() {
  local name=$1 limit=$2; shift 2
  if (( SECONDS + limit > budget )); then
    say "SKIPPED $name (${limit} s limit, $((budget - SECONDS)) s of the budget left)"; skipped+=("$name"); return
  fi
  local started=$SECONDS verdict=
  "$@" >"$scratch/logs/$name.log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS - started >= limit )); then
      kill -TERM -- "-$pid" 2>/dev/null; sleep 5; kill -KILL -- "-$pid" 2>/dev/null
      pkill -KILL -f -- "$scratch" 2>/dev/null  # what a check started in a session of its own (setsid, torchrun)
      verdict=TIMEOUT; break
    fi
    sleep 1
  done
  wait "$pid"; local rc=$?
  [ -z "$verdict" ] && { [ $rc -eq 0 ] && verdict=ok || verdict=FAILED; }
  if [ "$verdict" = ok ]; then
    say "ok      $name ($((SECONDS - started)) s) $(tail -n 1 "$scratch/logs/$name.log")"; passed+=("$name")
  else
    say "$verdict $name ($((SECONDS - started)) s), end of logs/$name.log:"
    tail -n 15 "$scratch/logs/$name.log" | sed 's/^/    /' | tee -a "$summary"
    failed+=("$name")
  fi
}
train() {  # train RUN_NAME PRECISION [ARGS...]
  local name=$1 precision=$2; shift 2
  "${launch[@]}" --num_processes 1 --mixed_precision "$precision" train.py "$@" run.dir="$scratch/$name"
}
# judge RUN PRECISION MIN_ACC [OTHER_RUN MAX_GAP]: its results.json says $device, PRECISION, both heads >= MIN_ACC
# (and within MAX_GAP of OTHER_RUN's); prints one line of what it read.
judge() {
  local run=$1; shift
  python3 bench/gpu_judge.py run "$scratch/$run" "$device" "$1" "$2" ${3:+"$scratch/$3"} ${4:+"$4"}
}
trained() {  # trained RUN PRECISION MIN_ACC [OTHER MAX_GAP] -- ARGS...: train, then judge
  local run=$1 precision=$2 least=$3; shift 3
  local judged=("$run" "$precision" "$least")
  while [ "$1" != "--" ]; do judged+=("$1"); shift; done; shift
  train "$run" "$precision" "$@" && judge "${judged[@]}"
}

check quick-bf16 120 trained quick-bf16 $bf16 $quick_floor -- "${quick[@]}"
check default-bf16 240 trained default-bf16 $bf16 $default_floor -- "${default[@]}"
[ $cpu -eq 1 ] && { say "SKIPPED fp16 (the grad scaler needs a GPU): quick-$half rehearses its stage in fp32"; skipped+=(fp16); }
[ $bf16 = no ] && { say "SKIPPED bf16 (this CPU emulates it, without AVX512-BF16): the *-bf16 stages rehearse theirs in fp32"
                    skipped+=(bf16); }
check quick-$half 120 trained quick-$half $half $quick_floor quick-bf16 $gap -- "${quick[@]}"

# 150 steps of the quick recipe with the default's moving average of the weights, log lines every 50: 100 steps
# recorded between them, syncs raising; as tests/test_host_reads.py judges it.
sync_free() {  # sync_free NAME PRECISION [ARGS...]
  local name=$1 precision=$2; shift 2
  MNIST_SUM_SYNC_DEBUG=$sync_debug "${launch[@]}" --num_processes 1 --mixed_precision "$precision" tests/host_reads_check.py \
    "$scratch/$name" --config configs/quick.yaml data.train_limit=38400 train.log_every=50 wandb.mode=disabled \
    train.ema_decay=0.999 run.dir="$scratch/$name-run" "$@" &&
  python3 bench/gpu_judge.py sync-free "$scratch/$name.0.json" 150 50
}
[ $cpu -eq 1 ] && { say "SKIPPED sync-debug mode (CUDA's): the sync-free checks count host reads and collectives only"
                    skipped+=(sync-debug); }
check sync-free-bf16 90 sync_free sync-free-bf16 $bf16
check sync-free-$half 90 sync_free sync-free-$half $half

kill_and_resume() {
  local args=(--config configs/quick.yaml train.deterministic=true checkpoint.every_steps=50 checkpoint.keep_last=100
              "${resume_limit[@]}")
  train resume-whole $bf16 "${args[@]}" || return 1
  setsid "${launch[@]}" --num_processes 1 --mixed_precision $bf16 train.py "${args[@]}" run.dir="$scratch/resume-killed" &
  local pid=$!
  until [ -e "$scratch/resume-killed/step_000100" ]; do kill -0 $pid 2>/dev/null || return 1; sleep 0.05; done
  kill -9 -- -$pid; wait $pid
  train resume-killed $bf16 "${args[@]}" --resume auto || return 1
  if cmp "$scratch/resume-whole/model.safetensors" "$scratch/resume-killed/model.safetensors"; then
    echo "byte-identical"
  else
    python3 bench/gpu_judge.py first-diff "$scratch/resume-whole" "$scratch/resume-killed"
    return 1
  fi
}
check kill-and-resume 180 kill_and_resume

ddp=nccl
[ $cpu -eq 1 ] && { ddp=gloo; say "SKIPPED NCCL (needs GPUs): gloo-2 and gloo-restart rehearse its stages"; skipped+=(nccl); }
if [ "$gpus" -ge 2 ]; then
  two() {
    "${launch[@]}" --multi_gpu --num_processes 2 --mixed_precision $bf16 train.py "${quick[@]}" run.dir="$scratch/$ddp-2" &&
    judge $ddp-2 $bf16 "$quick_floor" quick-bf16 "$gap"
  }
  check $ddp-2 120 two
  restart() {
    setsid "${launch[@]}" --multi_gpu --num_processes 2 --max_restarts 1 --mixed_precision $bf16 train.py \
      --config configs/quick.yaml "${resume_limit[@]}" checkpoint.every_steps=50 run.dir="$scratch/$ddp-restart" &
    local pid=$! worker
    until [ -e "$scratch/$ddp-restart/step_000100" ]; do kill -0 $pid 2>/dev/null || return 1; sleep 0.1; done
    worker=$(pgrep -f "train.py.*$ddp-restart" | while read -r p; do grep -qz '^RANK=1$' /proc/$p/environ && echo $p; done | head -1)
    [ -n "$worker" ] || { echo "no worker of rank 1 found to kill"; return 1; }
    kill -9 "$worker"; wait $pid && test -e "$scratch/$ddp-restart/results.json" && echo "restarted and finished"
  }
  check $ddp-restart 150 restart
else
  say "SKIPPED nccl-2, nccl-restart (one GPU: NCCL and a restarted worker need two)"; skipped+=(nccl-2 nccl-restart)
fi

# Last: compiling may take a minute or more, and must not cost the checks above their time.
check quick-bf16-compiled 150 trained quick-bf16-compiled $bf16 $quick_floor quick-bf16 $gap -- \
  "${quick[@]}" train.compile=true

runs=()
for run in quick-bf16 quick-bf16-compiled quick-$half default-bf16; do
  if [ -f "$scratch/$run/results.json" ]; then runs+=("$scratch/$run"); else say "table: $run left out (no results.json)"; fi
done
[ ${#runs[@]} -gt 0 ] && python3 bench/table.py --peak-tflops "$peak" "${runs[@]}" >"$scratch/table.md" \
  2>"$scratch/logs/table.log" && cat "$scratch/table.md"
say "gpu_check: ${#passed[@]} passed, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}, ${#skipped[@]} skipped${skipped[*]:+ (${skipped[*]})}; everything in $out/gpu_check.tar.gz"
[ ${#failed[@]} -eq 0 ]
