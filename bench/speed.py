"""The training step's speed against a bare PyTorch step, and the data path against a per-sample pipeline.

    python bench/speed.py                                   # quick recipe, fp32 and bf16, on the CPU or the GPU
    python bench/speed.py --config configs/default.yaml --precision bf16

Device and mixed precision come from Accelerate, as in train.py (a GPU when there is one, autocast for it).
One process times, in alternating windows so that both see the machine in the same moments:
- ours: train.py's own `train_step` (mnist_sum.step) on the model, optimizer and LR schedule through
  `accelerator.prepare`, with the batches, warps and dropout keys of mnist_sum.batches;
- bare: the same model, optimizer and batches in a plain step (torch.autocast, backward, step), no Accelerate.
The data path: an epoch of mnist_sum.batches against torchvision's MNIST with a per-sample `__getitem__` that
draws a number and one-hots it, through a DataLoader of batch 128 (the usual tutorial pipeline).
Prints one table; the ratio is ours / reference.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_sum.accelerator import make_accelerator  # noqa: E402
from mnist_sum.augment import warp  # noqa: E402
from mnist_sum.batches import TrainBatches  # noqa: E402
from mnist_sum.config import load_config  # noqa: E402
from mnist_sum.data import load_splits, make_datasets  # noqa: E402
from mnist_sum.model import build_model, sum_loss  # noqa: E402
from mnist_sum.schedule import make_optimizer  # noqa: E402
from mnist_sum.step import train_step  # noqa: E402


def setup(config: str, precision: str):
    """(accelerator, cfg, batches: an endless stream of train.py's batches, make_step(compiled) -> step())."""
    accelerator = make_accelerator(mixed_precision=precision)
    cfg = load_config(config)
    train_set = make_datasets(cfg, load_splits(cfg))[0].to(accelerator.device)
    batches = TrainBatches(train_set, cfg.train.global_batch_size, cfg.train.seed)

    def stream():
        for epoch in itertools.count():
            batches.set_epoch(epoch)
            yield from batches.batches()

    def make_step(compiled: bool = False):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        model, optimizer, scheduler = accelerator.prepare(model, *make_optimizer(model, cfg.optim, 10**6))
        forward = torch.compile(model) if compiled else model
        return lambda batch: train_step(forward, batch, optimizer, scheduler, accelerator, cfg)

    return accelerator, cfg, stream(), make_step


def bare_step(accelerator, cfg):
    """The plainest step that does the same work: no Accelerate, no schedule, no metrics."""
    torch.manual_seed(0)
    model = build_model(cfg.model).to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)

    def step(batch) -> None:
        images = warp(batch["image"], cfg.augment, batch["warp"]) if cfg.augment.enabled else batch["image"]
        with torch.autocast(accelerator.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            digit_logits, sum_logits = model(images, batch["number"], batch["noise_key"])
        sum_loss(digit_logits, sum_logits, batch["label"], batch["number"], cfg.optim.label_smoothing)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def alternate(steps: dict, stream, batch_size: int, sync, rounds: int = 10, window: int = 20) -> dict[str, float]:
    """Median samples/s of each step function, timed in alternating windows (the first round warms up)."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
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
    from torchvision import datasets, transforms

    class PerSampleSum(torch.utils.data.Dataset):
        def __init__(self, mnist) -> None:
            self.mnist = mnist

        def __len__(self) -> int:
            return len(self.mnist)

        def __getitem__(self, i: int):
            image, label = self.mnist[i]
            number = random.randint(0, 9)
            return image, torch.nn.functional.one_hot(torch.tensor(number), 10).float(), label, label + number

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (ROOT / "data" / "mnist").glob("*.gz"):
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        mnist = datasets.MNIST(tmp, train=True, download=False, transform=transforms.ToTensor())
        started, seen = time.perf_counter(), 0
        for images, *_ in torch.utils.data.DataLoader(PerSampleSum(mnist), batch_size=128, shuffle=True):
            seen += len(images)
            if seen >= samples:
                break
        return seen / (time.perf_counter() - started)


def device_batches(accelerator, cfg, sync) -> float:
    """Samples/s of one epoch of train.py's batches (order, numbers, warps and dropout keys drawn on the device)."""
    train_set = make_datasets(cfg, load_splits(cfg))[0].to(accelerator.device)
    batches = TrainBatches(train_set, 128, seed=0)
    started = time.perf_counter()
    batches.set_epoch(0)
    seen = sum(len(b["label"]) for b in batches.batches())
    sync()
    return seen / (time.perf_counter() - started)


def step_row(config: str, precision: str) -> tuple:
    accelerator, cfg, stream, make_step = setup(config, precision)
    sync = torch.accelerator.synchronize if accelerator.device.type != "cpu" else lambda: None
    rates = alternate({"ours": make_step(), "bare": bare_step(accelerator, cfg)}, stream, cfg.train.global_batch_size,
                      sync)
    name = "fp32" if precision == "no" else precision
    return f"train_step {name}, alternating windows", rates["ours"], "bare step", rates["bare"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=["no", "bf16", "fp16"])
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # one precision, as JSON
    args = parser.parse_args()
    if args.row:
        return print(json.dumps(step_row(args.config, args.precision[0])))
    rows = []
    for precision in args.precision:  # each in a fresh process, as train.py runs (and Accelerate's state is global)
        cmd = [sys.executable, __file__, "--config", args.config, "--precision", precision, "--row"]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    accelerator, cfg, _, _ = setup(args.config, "no")
    sync = torch.accelerator.synchronize if accelerator.device.type != "cpu" else lambda: None
    rows.append(("data path, batch 128, one epoch", device_batches(accelerator, cfg, sync), "per-sample pipeline",
                 per_sample_pipeline()))
    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else platform.processor() or "CPU"
    print(f"# {accelerator.device.type} ({device}), torch {torch.__version__}, config {args.config}")
    print(f"| {'what':<40} | {'ours (samples/s)':>16} | {'reference (samples/s)':>32} | {'ratio':>6} |")
    print(f"|{'-' * 42}|{'-' * 18}|{'-' * 34}|{'-' * 8}|")
    for what, ours, ref_name, ref in rows:
        print(f"| {what:<40} | {ours:>16,.0f} | {ref_name + ': ' + format(ref, ',.0f'):>32} | {ours / ref:>6.2f} |")


if __name__ == "__main__":
    main()
