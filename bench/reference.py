"""The quick recipe against a record-style reference net, trained side by side on this machine.

    python bench/reference.py                       # 5 seeds each, bf16 (as accelerate_config.yaml runs quick)
    python bench/reference.py --seeds 0 1 --precision no      # fp32: CPUs without AVX512-BF16
    python bench/reference.py --keep runs/reference           # quick's runs kept (runs/reference/quick-seedS)

The reference follows the MNIST speed record of github.com/tuomaso/train_mnist_fast (8_Final_00s76.ipynb:
99.04 +- 0.07% mean test accuracy over 30 seeds after one epoch, 0.76 s on a GTX 1660 Ti): a 5x5 conv of 24
channels, max pool, ReLU, a 3x3 conv of 32, max pool, ReLU, 800 -> 256 -> 10; Adam (lr 0.01, betas 0.7 and
0.9) under a one-cycle schedule, batch 256, one epoch, the data held in memory as one normalised tensor. Here
it trains on the recipes' 55,000 training images (val held out) with this machine's threads, in the same
precision as quick, and reads the 10,000 test digits (one head: it has no number to add).

Each seed runs the reference in this process, then `accelerate launch train.py --config configs/quick.yaml` in
a fresh one, so both see the machine in the same minutes (its speed swings by up to 30% between runs).
Reference time: its training plus one pass over test (its data normalised beforehand). Quick time: its
results.json train_time_s (training and its validations, after setup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# This checkout's code, also where another checkout is the one installed: quick runs its train.py and records its commit.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mnist_sum.config import PROJECT_ROOT, load_config  # noqa: E402
from mnist_sum.data.dataset import load_splits  # noqa: E402
from mnist_sum.distributed.cpu import set_threads  # noqa: E402


class RecordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5)
        self.conv2 = nn.Conv2d(24, 32, 3)
        self.fc1 = nn.Linear(800, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # pooling before the ReLU: the same function, less work
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def reference_run(splits, seed: int, precision: str) -> dict[str, float]:
    """Train the record's net for one epoch; its seconds (training and one test pass) and test accuracy."""
    def normalised(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)

    torch.manual_seed(seed)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    order = torch.randperm(len(train_x))
    # Data preparation is outside the timed region, as quick's train_time_s leaves out its setup.
    train_x, train_y, test_x = normalised(train_x)[order], train_y[order], normalised(test_x)
    started = time.perf_counter()
    model = RecordNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    batch = 256
    steps = (len(train_x) - 1) // batch + 1
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=steps, cycle_momentum=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for i in range(steps):
        with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(train_x[i * batch:(i + 1) * batch]), train_y[i * batch:(i + 1) * batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
        right = sum((model(x).argmax(1) == y).sum().item() for x, y in zip(test_x.split(2000), test_y.split(2000)))
    return {"seconds": time.perf_counter() - started, "digit_acc": right / len(test_y)}


def quick_run(seed: int, precision: str, run_dir: Path) -> dict[str, float]:
    """`accelerate launch train.py --config configs/quick.yaml`, as a user runs it; its training seconds and test."""
    launch = ["--config_file", "accelerate_config.yaml"] if precision == "bf16" else ["--mixed_precision", "no"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "train.py", "--config", "configs/quick.yaml",
           f"train.seed={seed}", f"run.dir={run_dir}", "wandb.mode=offline"]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"quick failed:\n{done.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {"seconds": results["train_time_s"], "digit_acc": results["test"]["digit_acc"],
            "sum_acc": results["test"]["sum_acc"], "train_flops": results["train_flops"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep quick's run folders in DIR/quick-seedS (bench/table.py reads them)")
    args = parser.parse_args()
    if args.keep and args.keep.exists() and any(args.keep.glob("quick-seed*")):
        sys.exit(f"reference.py: error: {args.keep} already holds quick-seed* runs; name another folder or remove them")
    set_threads()  # as train.py: this machine's cores
    splits = load_splits(load_config(PROJECT_ROOT / "configs" / "quick.yaml"))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, precision {args.precision}")
    print("| seed | reference s | reference digit | quick s | quick digit | quick sum | quick / reference |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ref = reference_run(splits, seed, args.precision)
            quick = quick_run(seed, args.precision, (args.keep or Path(tmp)) / f"quick-seed{seed}")
            ratios.append(quick["seconds"] / ref["seconds"])
            print(f"| {seed} | {ref['seconds']:.1f} | {ref['digit_acc']:.2%} | {quick['seconds']:.1f} | "
                  f"{quick['digit_acc']:.2%} | {quick['sum_acc']:.2%} | {ratios[-1]:.2f}x |", flush=True)
    print(f"quick / reference: median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x over {len(ratios)} seeds")


if __name__ == "__main__":
    main()
