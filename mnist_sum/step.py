"""What runs every batch: the optimizer and its LR schedule, one training step, and the train metrics window.

`train_step` is the whole step (augment, forward, loss, backward, clip, update, schedule). The trainer and
bench/speed.py both call it, so the benchmark times exactly the step that training runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

from mnist_sum.augment import warp
from mnist_sum.config import Config, OptimConfig
from mnist_sum.errors import Diverged
from mnist_sum.model import sum_loss
from mnist_sum.scoring import hits


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float) -> float:
    """Multiplier of the peak LR at `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return 1.0
    warmup = int(total_steps * warmup_fraction) if schedule == "onecycle" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig,
                   total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its LR schedule over `total_steps`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.schedule, cfg.warmup_fraction))
    return optimizer, scheduler


class StepOutput(NamedTuple):
    digit_logits: torch.Tensor
    sum_logits: torch.Tensor
    digit_ce: torch.Tensor
    sum_ce: torch.Tensor


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, accelerator: Accelerator, cfg: Config,
               epoch: int) -> StepOutput:
    """One optimizer step on `batch` (this process's slice of the global batch) of `epoch`."""
    images = batch["image"]
    if cfg.augment.enabled:  # each sample's warp is a function of (seed, epoch, index), like its number
        images = warp(images, cfg.augment, cfg.train.seed, epoch, batch["index"])
    digit_logits, sum_logits = model(images, batch["number"])
    loss, digit_ce, sum_ce = sum_loss(digit_logits, sum_logits, batch["label"], batch["number"],
                                      cfg.optim.label_smoothing)
    accelerator.backward(loss)
    if cfg.optim.grad_clip:
        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(digit_logits, sum_logits, digit_ce, sum_ce)


def count_flops(step: Callable[[], StepOutput]) -> tuple[StepOutput, int]:
    """Run `step` once, counting the FLOPs of the model's forward and backward with torch's FlopCounterMode
    (matrix products and convolutions; the augmentation and the optimizer's elementwise update are not
    model FLOPs and are not counted). Counting observes the ops; it changes neither them nor their results."""
    with FlopCounterMode(display=False) as counter:
        out = step()
    return out, counter.get_total_flops()


NO_STEP = 2**62


class TrainMetricsWindow:
    """Train metrics summed over the steps since the last log line, kept on the device so that logging costs
    no sync per step; also the first step (if any) whose loss was not finite."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(5, device=device, dtype=torch.float64)  # digit CE, sum CE, digit ok, sum ok, n
        self.first_bad_step = torch.full((1,), NO_STEP, device=device)
        self.started = time.perf_counter()
        self.pending = False

    def add(self, out: StepOutput, batch: dict[str, torch.Tensor], step: int) -> None:
        # Recorded on the device and checked at the next flush, so a healthy run pays no sync per step.
        bad = ~torch.isfinite(out.digit_ce + out.sum_ce)
        self.first_bad_step = torch.where(bad & (self.first_bad_step == NO_STEP), step, self.first_bad_step)
        n = len(batch["label"])
        digit_ok, sum_ok = hits(batch["label"], batch["number"], out.digit_logits.argmax(-1), out.sum_logits.argmax(-1))
        self.sums += torch.stack([out.digit_ce.detach() * n, out.sum_ce.detach() * n, digit_ok.sum(), sum_ok.sum(),
                                  torch.tensor(n, device=self.sums.device)]).double()
        self.pending = True

    def flush(self, accelerator: Accelerator, lr: float, epoch: float) -> dict[str, float]:
        """The window's metrics over all processes, then an empty window. Every checkpoint is preceded by a
        flush, so a non-finite loss stops the run here, before any checkpoint could hold the weights it made."""
        first_bad_step = int(accelerator.gather(self.first_bad_step).min())
        if first_bad_step != NO_STEP:
            raise Diverged(f"the loss became NaN or infinite at step {first_bad_step}; the run stopped there and no "
                           "checkpoint holds weights from that step on", first_bad_step)
        digit_ce, sum_ce, digit_ok, sum_ok, n = accelerator.reduce(self.sums, reduction="sum").tolist()
        elapsed = time.perf_counter() - self.started
        self.sums.zero_()
        self.started = time.perf_counter()
        self.pending = False
        return {
            "train/loss": (digit_ce + sum_ce) / (2 * n),
            "train/digit_loss": digit_ce / n,
            "train/sum_loss": sum_ce / n,
            "train/digit_acc": digit_ok / n,
            "train/sum_acc": sum_ok / n,
            "train/samples_per_s": n / elapsed,
            "train/lr": lr,
            "epoch": epoch,
        }
