"""Throughput, measured side by side in one run (these machines are noisy):

1. the project's training loop (train.py: Accelerate, metrics, checkpoints, W&B offline) against a bare
   PyTorch loop over the same model, batch size, data, augmentation and precision;
2. the project's data path (batched indexing of in-memory tensors) against a per-sample pipeline
   (torchvision MNIST + a Dataset.__getitem__ that draws random.randint and one-hots it, DataLoader
   batch 128).

    python bench/speed.py                         # the quick recipe's model, fp32 and bf16
    python bench/speed.py --config configs/default.yaml --precision bf16

Prints one table. The loops are timed in windows of steps, three ways:
- side by side: train.py and the bare loop run at the same time, one thread each on its own core, over the
  same seconds, so a slow spell of this shared machine slows both alike; the ratio is the median of the
  per-pair ratios.
- one process, alternating: train.py's step through Accelerate and the bare step, in alternating windows
  of one fresh process (all of train.py but its bookkeeping, with the least noise).
- in turn: each alone with all cores, alternating runs; the best window (as `timeit` takes the best of its
  repeats) and the median window of all runs. The noisiest.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_sum.augment import warp  # noqa: E402
from mnist_sum.config import load_config  # noqa: E402
from mnist_sum.cpu import keep_freed_memory, set_threads  # noqa: E402
from mnist_sum.data import SumDataset, load_splits, make_loader, set_epoch  # noqa: E402
from mnist_sum.model import build_model, sum_loss  # noqa: E402
from mnist_sum.step import make_optimizer, train_step  # noqa: E402

WINDOW = 30  # steps per timed window, as train.py's log interval below
WINDOWS = 5  # per run; the first is warm-up and is dropped, as for train.py


def model_and_optimizer(cfg):
    """The recipe's model, optimizer and LR schedule (train.py's, from mnist_sum.step)."""
    model = build_model(cfg.model).train()
    return model, *make_optimizer(model, cfg.optim, total_steps=10**6)


def bare_batches(n: int, batch: int) -> Iterator[torch.Tensor]:
    """Index tensors of whole shuffled batches, epoch after epoch."""
    return itertools.cycle(torch.randperm(n)[: n // batch * batch].split(batch))


def bare_step(model, optimizer, cfg, precision: str, train_images, train_labels, numbers, index) -> None:
    """One training step with nothing around it: the batch cut by tensor indexing, warp, forward, loss, update."""
    images, labels = train_images.index_select(0, index), train_labels.index_select(0, index)
    number = numbers.index_select(0, index)
    if cfg.augment.enabled:
        images = warp(images, cfg.augment, 0, 0, index)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        digit_logits, sum_logits = model(images, number)
    loss, _, _ = sum_loss(digit_logits, sum_logits, labels, number)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bare_loop(config: str, precision: str, threads: int = 0, start: str = "", stop: str = "") -> list[float]:
    """Samples/s of the plainest loop that does the same work (no Accelerate, no logging, no checks), per window.
    With train.py's CPU settings (threads, allocator), so that the ratio measures Accelerate and bookkeeping.

    Alone: WINDOWS windows, the first dropped as warm-up. Side by side: one warm-up window, then windows from
    the moment the file `start` exists until the file `stop` does (the unfinished window is dropped)."""
    set_threads(threads)
    keep_freed_memory()
    cfg = load_config(config)
    torch.manual_seed(0)
    train_images, train_labels = load_splits(cfg)["train"]
    model, optimizer, _ = model_and_optimizer(cfg)
    numbers = torch.randint(0, 10, (len(train_labels),))
    rates = []
    started = time.perf_counter()
    for step, index in enumerate(bare_batches(len(train_labels), cfg.train.global_batch_size), start=1):
        if (stop and os.path.exists(stop)) or (not stop and len(rates) == WINDOWS):
            break
        bare_step(model, optimizer, cfg, precision, train_images, train_labels, numbers, index)
        if step % WINDOW == 0:
            rates.append(len(index) * WINDOW / (time.perf_counter() - started))
            while start and not os.path.exists(start):  # warm, waiting for train.py's first window to end
                time.sleep(0.005)
            started = time.perf_counter()
    return rates[1:]


def accelerate_ab(config: str, precision: str, rounds: int = 20, steps: int = 20) -> list[float]:
    """[Accelerate step, bare step] median samples/s, timed in one process in alternating windows of `steps`
    steps, so that both see the same machine at the same moments. The Accelerate step is train.py's own
    `train_step`, on the model, optimizer, LR schedule and data loader through `accelerator.prepare`.
    The mixed precision comes from the environment, as under `accelerate launch` (see `fresh`)."""
    from accelerate.utils import set_seed
    from mnist_sum.distributed import make_accelerator

    from mnist_sum.data import make_datasets

    accelerator = make_accelerator()  # train.py's: CPU threads and allocator too
    cfg = load_config(config)
    splits = load_splits(cfg)
    train_set = make_datasets(cfg, splits)[0]
    set_seed(0)
    bare_model, bare_optimizer, _ = model_and_optimizer(cfg)
    model, optimizer, scheduler = model_and_optimizer(cfg)
    loader = make_loader(train_set, cfg.train.global_batch_size, seed=0, train=True)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)

    def loader_batches():
        for epoch in itertools.count():
            set_epoch(loader, epoch)
            yield from loader

    ours, bare = loader_batches(), bare_batches(len(train_set), cfg.train.global_batch_size)
    numbers = train_set.numbers()

    def accelerate_window() -> None:
        for batch in itertools.islice(ours, steps):
            train_step(model, batch, optimizer, scheduler, accelerator, cfg, epoch=0)

    def bare_window() -> None:
        for index in itertools.islice(bare, steps):
            bare_step(bare_model, bare_optimizer, cfg, precision, *splits["train"], numbers, index)

    rates: list[list[float]] = [[], []]
    for round_ in range(rounds + 1):  # the first round warms up
        for i, window in enumerate((accelerate_window, bare_window)):
            started = time.perf_counter()
            window()
            if round_:
                rates[i].append(steps * cfg.train.global_batch_size / (time.perf_counter() - started))
    return [statistics.median(r) for r in rates]


def fresh(function: str, *args, **kwargs) -> subprocess.Popen:
    """`speed.<function>(*args, **kwargs)` in a fresh process, as train.py runs (a warm benchmark process would
    flatter the bare loop), under `accelerate launch`'s environment variable for the precision (args[1])."""
    code = f"import sys; sys.path.insert(0, 'bench'); import speed; print(speed.{function}(*{args!r}, **{kwargs!r}))"
    env = dict(os.environ, ACCELERATE_MIXED_PRECISION=args[1])
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def result_of(process: subprocess.Popen) -> list[float]:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"a benchmark process failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def project_loop(config: str, precision: str, threads: int = 0, windows: int = WINDOWS,
                 on_line: Callable[[int], None] | None = None) -> list[float]:
    """Samples/s that train.py itself reports (metrics.jsonl), launched as a user would launch it.
    `on_line(n)` is called as the n-th training log line appears (for the side-by-side measurement)."""
    cfg = load_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        limit = WINDOW * windows * cfg.train.global_batch_size
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", precision, "--dynamo_backend", "no", "train.py", "--config", config,
               f"data.train_limit={limit}", "train.epochs=1", f"train.log_every={WINDOW}", f"train.cpu_threads={threads}",
               f"run.dir={run_dir}"]
        env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
        log = open(Path(tmp) / "log", "w+")  # not a pipe: tqdm's output would fill it and stall the run
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen = 0
        while process.poll() is None and on_line:
            metrics = run_dir / "metrics.jsonl"
            lines = metrics.read_text().count("train/samples_per_s") if metrics.exists() else 0
            for n in range(seen + 1, lines + 1):
                on_line(n)
            seen = lines
            time.sleep(0.005)
        if process.wait():
            log.seek(0)
            raise SystemExit(f"train.py failed: {log.read()[-2000:]}")
        log.close()
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["train/samples_per_s"] for x in lines if "train/samples_per_s" in x][1:]  # the first window warms up


def side_by_side(config: str, precision: str, windows: int = 8) -> tuple[float, float]:
    """Median samples/s of train.py and of the bare loop running at the same time, one thread each on its own
    core, timed over the same seconds: a slow spell of the machine slows both alike."""
    with tempfile.TemporaryDirectory() as tmp:
        start, stop = Path(tmp) / "start", Path(tmp) / "stop"
        bare = fresh("bare_loop", config, precision, threads=1, start=str(start), stop=str(stop))

        def on_line(n: int) -> None:
            if n == 1:  # train.py's warm-up window is over: the bare loop starts timing
                start.touch()
            if n == windows:  # train.py's last window is over
                stop.touch()

        try:
            ours = project_loop(config, precision, threads=1, windows=windows, on_line=on_line)
        finally:
            start.touch()
            stop.touch()
        return statistics.median(ours), statistics.median(result_of(bare))


class PerSampleSum(torch.utils.data.Dataset):
    """The usual tutorial pipeline: one Python call, one PIL image and one random draw per sample."""

    def __init__(self, mnist) -> None:
        self.mnist = mnist

    def __len__(self) -> int:
        return len(self.mnist)

    def __getitem__(self, i: int):
        image, label = self.mnist[i]
        number = random.randint(0, 9)
        return image, torch.nn.functional.one_hot(torch.tensor(number), 10).float(), label, label + number


def per_sample_pipeline(samples: int = 20_000) -> float:
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (ROOT / "data" / "mnist").glob("*.gz"):
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        mnist = datasets.MNIST(tmp, train=True, download=False, transform=transforms.ToTensor())
        loader = torch.utils.data.DataLoader(PerSampleSum(mnist), batch_size=128, shuffle=True)
        started, seen = time.perf_counter(), 0
        for images, *_ in loader:
            seen += len(images)
            if seen >= samples:
                break
        return seen / (time.perf_counter() - started)


def batched_pipeline() -> float:
    cfg = load_config(None)
    images, labels = load_splits(cfg)["train"]
    loader = make_loader(SumDataset(images, labels, "train", 0), 128, seed=0, train=True)
    set_epoch(loader, 0)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["label"])
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    rows = []
    for precision in args.precision:
        name = "fp32" if precision == "no" else precision
        pairs = [side_by_side(args.config, precision) for _ in range(args.repeats)]
        ratio = statistics.median(o / b for o, b in pairs)
        rows.append((f"loop {name}, side by side, 1 thread each", statistics.median(o for o, _ in pairs),
                     "bare loop", statistics.median(b for _, b in pairs), ratio))
        ours_step, bare_step_rate = result_of(fresh("accelerate_ab", args.config, precision))
        rows.append((f"step {name}, one process, alternating", ours_step, "bare step", bare_step_rate,
                     ours_step / bare_step_rate))
        bare, ours = [], []
        for _ in range(args.repeats):  # alternate, so drifts in machine load hit both alike
            bare += result_of(fresh("bare_loop", args.config, precision))
            ours += project_loop(args.config, precision)
        rows.append((f"loop {name}, in turn, best window", max(ours), "bare loop", max(bare), max(ours) / max(bare)))
        rows.append((f"loop {name}, in turn, median window", statistics.median(ours), "bare loop",
                     statistics.median(bare), statistics.median(ours) / statistics.median(bare)))
    per_sample, batched = [], []
    for _ in range(args.repeats):
        per_sample.append(per_sample_pipeline())
        batched.append(batched_pipeline())
    rows.append(("data path, batch 128, best run", max(batched), "per-sample pipeline", max(per_sample),
                 max(batched) / max(per_sample)))

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"config {args.config}, {args.repeats} alternating runs of each")
    print(f"| {'what':<42} | {'ours (samples/s)':>16} | {'reference (samples/s)':>30} | {'ratio':>6} |")
    print(f"|{'-' * 44}|{'-' * 18}|{'-' * 32}|{'-' * 8}|")
    for what, ours_rate, ref_name, ref_rate, ratio in rows:
        print(f"| {what:<42} | {ours_rate:>16,.0f} | {ref_name + ': ' + format(ref_rate, ',.0f'):>30} | "
              f"{ratio:>6.2f} |")


if __name__ == "__main__":
    main()
