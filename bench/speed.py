"""The training step's speed against a bare PyTorch step, and the data path against a per-sample pipeline.

    python bench/speed.py                                   # quick recipe, fp32 and bf16, on the CPU or the GPU
    python bench/speed.py --config configs/default.yaml --precision bf16

Device and precision from Accelerate, as in train.py. One process per precision times, in alternating windows
(both see the machine in the same moments), train.py's `train_step` (everything through `accelerator.prepare`)
against a bare step on the same model and batches (autocast, backward, step); and an epoch of
mnist_sum.data.batches against a per-sample pipeline (torchvision's MNIST, a DataLoader of batch 128).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# This checkout's code, also where another checkout is the one installed: the speed measured is this code's.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mnist_sum.config import PROJECT_ROOT, load_config  # noqa: E402
from mnist_sum.data.augment import corrupt, warp  # noqa: E402
from mnist_sum.data.batches import TrainBatches  # noqa: E402
from mnist_sum.data.dataset import load_splits, make_datasets  # noqa: E402
from mnist_sum.distributed.accelerator import make_accelerator  # noqa: E402
from mnist_sum.model.network import build_model, sum_loss  # noqa: E402
from mnist_sum.train.averaging import WeightAverage  # noqa: E402
from mnist_sum.train.schedule import make_optimizer  # noqa: E402
from mnist_sum.train.step import train_step  # noqa: E402


def setup(config: str, precision: str):
    """(accelerator, cfg, sync, batches: an endless stream of train.py's batches, make_step(compiled) -> step)."""
    accelerator, cfg = make_accelerator(mixed_precision=precision), load_config(config)
    batches = TrainBatches(make_datasets(cfg, load_splits(cfg))[0].to(accelerator.device), cfg.train.global_batch_size,
                           cfg.train.seed)

    def stream():
        for epoch in itertools.count():
            batches.set_epoch(epoch)
            yield from batches.batches()

    def make_step(compiled: bool = False):
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.train.global_batch_size)
        model, optimizer, scheduler = accelerator.prepare(model, *make_optimizer(model, cfg.optim, 10**6))
        forward = torch.compile(model) if compiled else model
        average = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        return lambda batch: train_step(forward, batch, optimizer, scheduler, accelerator, cfg, average)

    sync = torch.accelerator.synchronize if accelerator.device.type != "cpu" else lambda: None
    return accelerator, cfg, sync, stream(), make_step


def bare_step(accelerator, cfg):
    """The plainest step that does the same work: no Accelerate, no schedule, no metrics."""
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.train.global_batch_size).to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)

    def step(batch) -> None:
        images = warp(batch["image"], cfg.augment, batch["warp"]) if cfg.augment.enabled else batch["image"]
        images = corrupt(images.float(), cfg.augment.corrupt, batch["noise_key"]) if cfg.augment.corrupt else images
        with torch.autocast(accelerator.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            digit_logits, sum_logits = model(images, batch["number"], batch["noise_key"])
        sum_loss(digit_logits, sum_logits, batch["label"], batch["number"], cfg.optim.label_smoothing)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def alternate(steps: dict, stream, batch_size: int, sync, rounds: int = 10, window: int = 20) -> dict[str, float]:
    """Median samples/s of each step function, timed in alternating windows (the first round warms up)."""
    rates = {name: [] for name in steps}
    for round_ in range(rounds + 1):
        for name, step in steps.items():
            sync()
            started = time.perf_counter()
            for batch in itertools.islice(stream, window):
                step(batch)
            sync()
            if round_:
                rates[name].append(window * batch_size / (time.perf_counter() - started))
    return {name: statistics.median(r) for name, r in rates.items()}


def per_sample_pipeline(samples: int = 20_000) -> float:
    """Samples/s of torchvision's MNIST whose per-sample __getitem__ also draws a number and one-hots it."""
    from torchvision import datasets, transforms

    def pair(label: int):
        number = random.randint(0, 9)
        return torch.nn.functional.one_hot(torch.tensor(number), 10).float(), label, label + number

    with tempfile.TemporaryDirectory() as tmp:
        (raw := Path(tmp) / "MNIST" / "raw").mkdir(parents=True)
        for gz in (PROJECT_ROOT / "data" / "mnist").glob("*.gz"):
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        mnist = datasets.MNIST(tmp, transform=transforms.ToTensor(), target_transform=pair)
        loader, started = torch.utils.data.DataLoader(mnist, batch_size=128, shuffle=True), time.perf_counter()
        seen = sum(len(images) for images, _ in itertools.islice(loader, samples // 128))
        return seen / (time.perf_counter() - started)


def rows(config: str, precision: str) -> tuple[str, list[tuple]]:
    """This process's machine line and rows: the step in `precision`, and for fp32 also the data path."""
    accelerator, cfg, sync, stream, make_step = setup(config, precision)
    rate = alternate({"ours": make_step(), "bare": bare_step(accelerator, cfg)}, stream, cfg.train.global_batch_size, sync)
    out = [(f"train_step {'fp32' if precision == 'no' else precision}, alternating windows", rate["ours"], "bare step",
            rate["bare"])]
    if precision == "no":  # one epoch of train.py's batches (order and per-sample draws made on the device)
        batches = TrainBatches(make_datasets(cfg, load_splits(cfg))[0].to(accelerator.device), 128, seed=0)
        started = time.perf_counter()
        batches.set_epoch(0)
        seen = sum(len(b["label"]) for b in batches.batches())
        sync()
        out.append(("data path, batch 128, one epoch", seen / (time.perf_counter() - started), "per-sample pipeline",
                    per_sample_pipeline()))
    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else platform.processor() or "CPU"
    return f"# {accelerator.device.type} ({device}), torch {torch.__version__}, config {config}", out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=["no", "bf16", "fp16"])
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # one precision, as JSON
    args = parser.parse_args()
    if args.row:
        return print(json.dumps(rows(args.config, args.precision[0])))
    table = []  # each precision in a fresh process, as train.py runs (Accelerate's state is global)
    for cmd in ([sys.executable, __file__, "--config", args.config, "--precision", p, "--row"] for p in args.precision):
        machine, out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        table += out
    print(f"{machine}\n| {'what':<40} | {'ours (samples/s)':>16} | {'reference (samples/s)':>32} | {'ratio':>6} |")
    print(f"|{'-' * 42}|{'-' * 18}|{'-' * 34}|{'-' * 8}|")
    for what, ours, ref_name, ref in table:
        print(f"| {what:<40} | {ours:>16,.0f} | {ref_name + ': ' + format(ref, ',.0f'):>32} | {ours / ref:>6.2f} |")


if __name__ == "__main__":
    main()
