"""torch.compile against eager, on one recipe's model and batch: the training step's speed and the compile time.

    python bench/compile.py --config configs/quick.yaml --precision bf16
    python bench/compile.py --config configs/default.yaml --precision no

Both in this one fresh process, with train.py's CPU settings (threads, allocator): the first step (which
compiles), then 40 timed steps after 5 of warm-up. Prints one line per mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnist_sum.config import load_config  # noqa: E402
from mnist_sum.cpu import keep_freed_memory, set_threads  # noqa: E402
from mnist_sum.model import build_model, sum_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    args = parser.parse_args()
    set_threads(0)
    keep_freed_memory()
    cfg = load_config(args.config)
    size = cfg.train.global_batch_size
    images = torch.randint(0, 256, (size, 28, 28), dtype=torch.uint8)
    labels, numbers = torch.randint(0, 10, (size,)), torch.randint(0, 10, (size,))
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        forward = torch.compile(model) if mode == "compiled" else model

        def step(forward=forward, optimizer=optimizer) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                digit_logits, sum_logits = forward(images, numbers)
            sum_loss(digit_logits, sum_logits, labels, numbers)[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        started = time.perf_counter()
        step()
        first = time.perf_counter() - started
        for _ in range(5):
            step()
        started = time.perf_counter()
        for _ in range(40):
            step()
        rate = 40 * size / (time.perf_counter() - started)
        print(f"{args.config} {args.precision} {mode}: first step {first:.1f} s, then {rate:,.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
