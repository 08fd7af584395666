"""Data-parallel scaling on this machine's CPU: one recipe on 1, 2 and 4 processes, one thread each.

    python bench/scaling.py                                   # the quick recipe, fp32, 1 / 2 / 4 processes
    python bench/scaling.py --processes 1 2 --train-limit 25600

For each process count, a real train.py run under `accelerate launch` (gloo): samples/s, efficiency (samples/s
over the process count times one process's), the largest relative gap of train/loss at a logged step against the
1-process run, and the test accuracy. Then the all-reduce's share of the step: inside the same number of
processes, the real `train_step` in alternating windows with its collectives (DDP's gradient all-reduce and the
BatchNorm statistics) and without them; share = 1 - (rate with) / (rate without). One more row: 1 process with
all the machine's cores, what a single run on this machine would use instead.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def launch(processes: int, script: list[str]) -> None:
    mode = "--multi_gpu" if processes > 1 else "--cpu"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_machines", "1", "--num_processes",
           str(processes), "--mixed_precision", "no", "--dynamo_backend", "no", *script]
    env = dict(os.environ, WANDB_MODE="disabled", TQDM_DISABLE="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")


def train_run(tmp: Path, processes: int, threads: int, args: argparse.Namespace) -> dict:
    run_dir = tmp / f"run-{processes}x{threads}"
    launch(processes, ["train.py", "--config", args.config, f"train.cpu_threads={threads}", f"run.dir={run_dir}",
                       *([f"data.train_limit={args.train_limit}"] if args.train_limit else [])])
    results = json.loads((run_dir / "results.json").read_text())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = results["steps"] * results["global_batch_size"]
    return {"samples_per_s": samples / results["train_time_s"], "test": results["test"],
            "losses": {x["step"]: x["train/loss"] for x in lines if "train/loss" in x}}


def worker(out: str, config: str, rounds: int = 6, steps: int = 10) -> None:
    """Inside N processes: [rate with collectives, rate without], samples/s, alternating windows of `steps`."""
    import torch

    import mnist_sum.layers
    from mnist_sum.accelerator import make_accelerator
    from mnist_sum.batches import TrainBatches
    from mnist_sum.config import load_config
    from mnist_sum.data import load_splits, make_datasets
    from mnist_sum.model import build_model
    from mnist_sum.schedule import make_optimizer
    from mnist_sum.step import train_step

    cfg = load_config(config, ["train.cpu_threads=1"])
    accelerator = make_accelerator(cpu_threads=1)
    train_set = make_datasets(cfg, load_splits(cfg))[0].to(accelerator.device)
    batches = TrainBatches(train_set, cfg.train.global_batch_size, cfg.train.seed, accelerator.process_index,
                           accelerator.num_processes)
    batches.set_epoch(0)
    stream = itertools.cycle(list(batches.batches()))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model, optimizer, scheduler = accelerator.prepare(model, *make_optimizer(model, cfg.optim, 10**6))
    global_processes = mnist_sum.layers.processes

    def window(collectives: bool) -> float:
        mnist_sum.layers.processes = global_processes if collectives else (lambda: 1)  # BatchNorm per process
        started = time.perf_counter()
        with contextlib.nullcontext() if collectives else accelerator.no_sync(model):  # no_sync: no all-reduce
            for _ in range(steps):
                train_step(model, next(stream), optimizer, scheduler, accelerator, cfg)
        return steps * cfg.train.global_batch_size / (time.perf_counter() - started)

    rates: list[list[float]] = [[], []]
    for round_ in range(rounds + 1):  # the first round warms up
        for i, collectives in enumerate((True, False)):
            rate = window(collectives)
            if round_:
                rates[i].append(rate)
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps([statistics.median(r) for r in rates]))
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.config)
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: train_run(Path(tmp), n, 1, args) for n in args.processes}
        alone = train_run(Path(tmp), 1, cores, args)
        for n, run in runs.items():
            share = "-"
            if n > 1:
                launch(n, ["bench/scaling.py", "--config", args.config, "--worker", f"{tmp}/share-{n}.json"])
                with_comm, without = json.loads(Path(f"{tmp}/share-{n}.json").read_text())
                share = f"{1 - with_comm / without:.0%}"
            base = runs[min(runs)]
            gap = max(abs(loss / base["losses"][s] - 1) for s, loss in run["losses"].items())
            rows.append((f"{n} x 1 thread", run, run["samples_per_s"] / (n / min(runs) * base["samples_per_s"]), share, gap))
        rows.append((f"1 x {cores} threads", alone, alone["samples_per_s"] / runs[min(runs)]["samples_per_s"], "-",
                     max(abs(loss / runs[min(runs)]["losses"][s] - 1) for s, loss in alone["losses"].items())))
    import torch

    print(f"# {args.config}, fp32, {cores} cores, torch {torch.__version__}; efficiency: samples/s over (processes x "
          f"1 process's); the last row: speed-up over 1 process with 1 thread")
    print("| processes | samples/s | efficiency | all-reduce share | train/loss gap to 1 process | test digit / sum |")
    print("|---|---|---|---|---|---|")
    for name, run, efficiency, share, gap in rows:
        print(f"| {name} | {run['samples_per_s']:,.0f} | {efficiency:.2f} | {share} | {gap:.2%} | "
              f"{run['test']['digit_acc']:.2%} / {run['test']['sum_acc']:.2%} |")


if __name__ == "__main__":
    main()
