"""Data-parallel scaling, strong and weak, on this machine's CPU cores or on its GPUs.

    python bench/scaling.py                    # quick recipe, fp32: 1, 2, 4 CPU processes x 1 thread, 1 x all cores
    python bench/scaling.py --gpus 8           # 1, 2, 4, 8 GPUs, bf16, the same table
    python bench/scaling.py --ddp              # DDP's settings side by side, inside 2 processes

Every row is a real train.py run under `accelerate launch` (gloo on the CPU, NCCL on GPUs):
- strong: the recipe as it is; the global batch is fixed and each process trains a slice of it, so every process
  count trains the same function (the train/loss gap to 1 process shows it);
- weak: each process trains a whole batch of the recipe's size, so the global batch grows with the processes; the
  LR follows it by the square-root rule (Adam's: LR x sqrt(processes)), over the same epochs, hence fewer steps.
samples/s counts the training steps only: the run's train/samples_per_s log windows (validation and the first
window, which warms up, left out). Efficiency: samples/s over (processes x 1 process's). The collectives' share:
inside the same processes, the real `train_step` in alternating windows with DDP's gradient all-reduce and
without it (`no_sync`), share = 1 - (rate with) / (rate without). With --ddp: the step inside 2 processes, each
DDP setting (Accelerate's DistributedDataParallelKwargs) on its own copy of the model, in alternating windows.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The DDP settings --ddp compares (Accelerate's DistributedDataParallelKwargs fields). DDP's buckets are filled in
# reverse parameter order as backward produces the gradients; one bucket (the default, 25 MB, holds this net's
# 0.8-1.6 MB) is all-reduced only after the whole backward, smaller ones while it still runs.
DDP_VARIANTS = {
    "default (25 MB buckets)": {},
    "broadcast_buffers=False": {"broadcast_buffers": False},
    "buckets of 0.25 MB": {"broadcast_buffers": False, "bucket_cap_mb": 0.25},
    "gradient_as_bucket_view": {"broadcast_buffers": False, "gradient_as_bucket_view": True},
    "static_graph": {"broadcast_buffers": False, "static_graph": True},
}


def launch(processes: int, gpus: bool, script: list[str]) -> None:
    mode = ["--multi_gpu"] if processes > 1 else [] if gpus else ["--cpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_machines", "1", "--num_processes",
           str(processes), "--mixed_precision", "bf16" if gpus else "no", "--dynamo_backend", "no", *script]
    env = dict(os.environ, WANDB_MODE="disabled", TQDM_DISABLE="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")


def step_rate(lines: list[dict], global_batch: int) -> float:
    """Samples/s of the training steps: the log windows' own rates, weighted by their steps, the first left out."""
    train = [x for x in lines if "train/samples_per_s" in x]
    samples = seconds = 0.0
    for before, line in zip(train, train[1:]):
        n = (line["step"] - before["step"]) * global_batch
        samples, seconds = samples + n, seconds + n / line["train/samples_per_s"]
    return samples / seconds


def loss_gap(run: dict, base: dict) -> float:
    """The largest relative gap of train/loss at a logged step between two runs of the same steps."""
    return max(abs(loss / base["losses"][step] - 1) for step, loss in run["losses"].items())


def overrides(cfg, processes: int, weak: bool) -> list[str]:
    """The recipe as it is (strong), or each process a whole batch of it and the LR by the square-root rule (weak)."""
    if not weak:
        return []
    return [f"train.global_batch_size={cfg.train.global_batch_size * processes}",
            f"optim.lr={cfg.optim.lr * math.sqrt(processes):.6g}"]


def train_run(tmp: Path, processes: int, threads: int, weak: bool, args: argparse.Namespace) -> dict:
    from mnist_sum.config import load_config

    cfg = load_config(args.config)
    run_dir = tmp / f"run-{processes}x{threads}-{'weak' if weak else 'strong'}"
    launch(processes, bool(args.gpus), [
        "train.py", "--config", args.config, f"run.dir={run_dir}", "wandb.mode=disabled",
        *([f"train.cpu_threads={threads}"] if not args.gpus else []), *overrides(cfg, processes, weak),
        *([f"data.train_limit={args.train_limit}"] if args.train_limit else [])])
    results = json.loads((run_dir / "results.json").read_text())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"samples_per_s": step_rate(lines, results["global_batch_size"]), "test": results["test"],
            "losses": {x["step"]: x["train/loss"] for x in lines if "train/loss" in x}}


def worker(out: str, args: argparse.Namespace) -> None:
    """Inside N processes: the real step's samples/s with and without DDP's all-reduce (or, --ddp, under each
    DDP setting), written by the main process as JSON."""
    import torch
    from accelerate.utils import DistributedDataParallelKwargs

    from bench.speed import alternate
    from mnist_sum.config import load_config
    from mnist_sum.data.batches import TrainBatches
    from mnist_sum.data.dataset import load_splits, make_datasets
    from mnist_sum.distributed.accelerator import make_accelerator
    from mnist_sum.model.network import build_model
    from mnist_sum.train.schedule import make_optimizer
    from mnist_sum.train.step import train_step

    accelerator = make_accelerator(cpu_threads=1)
    world = accelerator.num_processes
    cfg = load_config(args.config, overrides(load_config(args.config), world, args.weak))
    data = make_datasets(cfg, load_splits(cfg))[0].to(accelerator.device)
    batches = TrainBatches(data, cfg.train.global_batch_size, cfg.train.seed, accelerator.process_index, world,
                           unit=cfg.model.norm_unit)
    batches.set_epoch(0)
    stream = itertools.cycle(list(batches.batches()))
    sync = torch.accelerator.synchronize if accelerator.device.type != "cpu" else (lambda: None)

    def step_fn(model, optimizer, scheduler, sync_grads: bool = True):
        def step(batch):
            with contextlib.nullcontext() if sync_grads else model.no_sync():
                train_step(model, batch, optimizer, scheduler, accelerator, cfg)
        return step

    def fresh(ddp_kwargs: dict | None):
        torch.manual_seed(0)
        network = build_model(cfg.model, cfg.train.global_batch_size).to(accelerator.device)
        optimizer, scheduler = make_optimizer(network, cfg.optim, 10**6)
        if ddp_kwargs is None:  # as train.py prepares it
            return accelerator.prepare(network, optimizer, scheduler)
        # The dictionary Accelerate hands DDP for these DistributedDataParallelKwargs.
        kwargs = DistributedDataParallelKwargs(**ddp_kwargs).to_kwargs()
        device_ids = [accelerator.local_process_index] if accelerator.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids, **kwargs), optimizer, scheduler

    if args.ddp:
        steps = {name: step_fn(*fresh(kwargs)) for name, kwargs in DDP_VARIANTS.items()}
    else:
        model, optimizer, scheduler = fresh(None)
        steps = {"with": step_fn(model, optimizer, scheduler), "without": step_fn(model, optimizer, scheduler, False)}
    rates = alternate(steps, stream, cfg.train.global_batch_size, sync, args.rounds, args.window)
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps(rates))
    accelerator.end_training()


def collectives_share(tmp: Path, processes: int, weak: bool, args: argparse.Namespace) -> float:
    out = tmp / f"share-{processes}-{weak}.json"
    launch(processes, bool(args.gpus), ["bench/scaling.py", "--config", args.config, "--worker", str(out),
                                        *(["--weak"] if weak else [])])
    rates = json.loads(out.read_text())
    return 1 - rates["with"] / rates["without"]


def machine(gpus: int) -> str:
    import platform

    import torch

    if gpus:
        return f"{gpus} x {torch.cuda.get_device_name()}, bf16, torch {torch.__version__}"
    return f"{len(os.sched_getaffinity(0))} CPU cores ({platform.processor() or platform.machine()}), fp32, " \
           f"torch {torch.__version__}, gloo"


def scaling_table(args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0))
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.gpus] if args.gpus else args.processes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for weak in (False, True):
            runs = {n: train_run(Path(tmp), n, 1, weak, args) for n in counts}
            one = runs[counts[0]]
            for n, run in runs.items():
                share = collectives_share(Path(tmp), n, weak, args) if n > 1 else None
                gap = None if weak else loss_gap(run, one)
                rows.append(("weak" if weak else "strong", f"{n} x {'GPU' if args.gpus else '1 thread'}", run,
                             run["samples_per_s"] / (n / counts[0] * one["samples_per_s"]), share, gap))
        if not args.gpus:  # one process with every core: what a single run on this machine uses instead
            alone = train_run(Path(tmp), 1, cores, False, args)
            one = rows[0][2]
            rows.append(("strong", f"1 x {cores} threads", alone, alone["samples_per_s"] / one["samples_per_s"], None,
                         loss_gap(alone, one)))
    print(f"# {args.config} on {machine(args.gpus)}; efficiency: samples/s over (processes x 1 process's)"
          + ("" if args.gpus else f"; the last row: speed-up of {cores} threads over 1"))
    print("| scaling | processes | samples/s | efficiency | collectives' share | train/loss gap to 1 process "
          "| test digit / sum |")
    print("|---|---|---|---|---|---|---|")
    for kind, name, run, efficiency, share, gap in rows:
        print(f"| {kind} | {name} | {run['samples_per_s']:,.0f} | {efficiency:.2f} | "
              f"{'-' if share is None else format(share, '.0%')} | {'-' if gap is None else format(gap, '.2%')} | "
              f"{run['test']['digit_acc']:.2%} / {run['test']['sum_acc']:.2%} |")
    if not args.gpus and 2 in counts:
        two = next(r for r in rows if r[0] == "strong" and r[1].startswith("2 x"))
        print(f"\n2 processes x 1 thread against 1 process x {cores} threads (strong): "
              f"{two[2]['samples_per_s'] / rows[-1][2]['samples_per_s']:.2f}x")


def ddp_table(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        launch(2 if not args.gpus else args.gpus, bool(args.gpus),
               ["bench/scaling.py", "--config", args.config, "--worker", str(out), "--ddp",
                "--rounds", str(args.rounds), "--window", str(args.window)])
        rates = json.loads(out.read_text())
    base = next(iter(rates.values()))
    print(f"# {args.config} on {machine(args.gpus)}, {2 if not args.gpus else args.gpus} processes, "
          f"median of {args.rounds} alternating windows of {args.window} steps")
    print("| DDP setting | samples/s | against the default |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")


def paper(args: argparse.Namespace) -> None:
    """What N GPUs would do with the recipe, from counts made here (machine-independent) and stated assumptions."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.speed import setup
    from mnist_sum.model.flops import count_flops
    from mnist_sum.model.network import build_model

    class CountOps(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args_=(), kwargs=None):
            CountOps.ops += 1
            return func(*args_, **(kwargs or {}))

    _, cfg, _, stream, make_step = setup(args.config, "no")
    step = make_step()
    step(next(stream))
    with CountOps():
        step(next(stream))
    _, flops = count_flops(lambda: step(next(stream)))
    per_sample = flops / cfg.train.global_batch_size
    grad_mb = sum(p.numel() for p in build_model(cfg.model).parameters()) * 4 / 2**20
    host_ms = CountOps.ops * args.op_us / 1000
    batch, gpus = cfg.train.global_batch_size, args.paper
    compute_ms = lambda samples: samples * per_sample / (args.tflops * 1e12) * 1000  # noqa: E731
    one = max(host_ms, compute_ms(batch))
    many = max(host_ms, compute_ms(batch / gpus)) + args.allreduce_ms
    print(f"# {args.config} on paper: {gpus} GPUs of one machine. Counted here: {CountOps.ops} aten ops per step, "
          f"{per_sample / 1e6:.1f} MFLOP per sample (forward and backward), {grad_mb:.2f} MB of fp32 gradients. "
          f"Assumed: {args.op_us} us of host time per op (eager PyTorch), {args.tflops:g} TFLOP/s achieved per GPU, "
          f"{args.allreduce_ms} ms for the all-reduce (NVLink, nccl-tests).")
    print(f"| what | 1 GPU | {gpus} GPUs |")
    print("|---|---|---|")
    print(f"| samples per GPU per step | {batch} | {batch / gpus:g} |")
    print(f"| compute per step (ms) | {compute_ms(batch):.3f} | {compute_ms(batch / gpus):.3f} |")
    print(f"| host time per step (ms) | {host_ms:.2f} | {host_ms:.2f} |")
    print(f"| all-reduce (ms) | - | {args.allreduce_ms} |")
    print(f"| step (ms) | {one:.2f} | {many:.2f} |")
    print(f"| samples/s | {batch / one * 1000:,.0f} | {batch / many * 1000:,.0f} |")
    print(f"| speed-up | 1 | {one / many:.2f} |")
    # N GPUs pay from the global batch at which they run at least N/2 times one GPU's samples/s: the compute of a
    # GPU's share must outweigh the fixed cost of a step (host time, all-reduce).
    pays = next(b for b in (2**k for k in range(40))
                if max(host_ms, compute_ms(b)) / (max(host_ms, compute_ms(b / gpus)) + args.allreduce_ms) >= gpus / 2)
    print()
    print(f"{gpus} GPUs run at {gpus / 2:g}x one GPU's samples/s from a global batch of {pays:,} ({pays // gpus:,} per GPU).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], help="CPU process counts")
    parser.add_argument("--gpus", type=int, default=0, help="use N GPUs: rows 1, 2, 4, ... N, in bf16")
    parser.add_argument("--ddp", action="store_true", help="compare DDP settings inside 2 processes (or --gpus N)")
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0: all)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating windows per step function")
    parser.add_argument("--window", type=int, default=10, help="steps per window")
    parser.add_argument("--paper", type=int, default=0, metavar="N",
                        help="no runs: what N GPUs of one machine would do, from counted ops and FLOPs")
    parser.add_argument("--op-us", type=float, default=10.0, help="--paper: host microseconds per op")
    parser.add_argument("--tflops", type=float, default=100.0, help="--paper: achieved TFLOP/s per GPU")
    parser.add_argument("--allreduce-ms", type=float, default=0.1, help="--paper: the gradient all-reduce, ms")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    if args.paper:
        return paper(args)
    return ddp_table(args) if args.ddp else scaling_table(args)


if __name__ == "__main__":
    main()
