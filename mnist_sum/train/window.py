"""The train metrics window: what the steps since the last log line did, summed on the device; and
`TrainLog`, which adds each step to it and logs it.

Adding a step costs no host read or host-made tensor; the window is read (one reduction over processes and
one copy to the host) only when a log line is written, every `train.log_every` steps and before each
checkpoint.
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from mnist_sum.errors import Diverged
from mnist_sum.model.scoring import hits
from mnist_sum.tracking.trackers import Tracker
from mnist_sum.train.state import LoopState
from mnist_sum.train.step import StepOutput

NO_STEP = 2**62


class TrainMetricsWindow:
    """Train metrics summed over the steps since the last log line, on the device; also the first step (if any)
    whose loss was not finite, and (fp16) how many updates the grad scaler skipped."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # digit CE, sum CE, digit ok, sum ok
        self.skipped = torch.zeros((), device=device, dtype=torch.int64)
        self.first_bad_step = torch.full((1,), NO_STEP, device=device)
        self.samples = 0  # this process's, counted on the host: sizes are known without asking the device
        self.scaled = False  # seen a step of a grad scaler (fp16)
        self.started = time.perf_counter()

    @property
    def pending(self) -> bool:
        return self.samples > 0

    def add(self, out: StepOutput, step: int, labels: torch.Tensor, numbers: torch.Tensor) -> None:
        bad = ~torch.isfinite(out.digit_ce.sum() + out.sum_ce.sum())
        self.first_bad_step = torch.where(bad & (self.first_bad_step == NO_STEP), step, self.first_bad_step)
        digit_ok, sum_ok = hits(labels, numbers, out.digit_logits.argmax(-1), out.sum_logits.argmax(-1))
        self.sums += torch.stack([out.digit_ce.detach().sum(), out.sum_ce.detach().sum(), digit_ok.sum(),
                                  sum_ok.sum()]).double()
        if out.skipped is not None:
            self.skipped += out.skipped
            self.scaled = True
        self.samples += len(labels)

    def flush(self, accelerator: Accelerator, lr: float, epoch: float) -> dict[str, float]:
        """The window's metrics over all processes, then an empty window. Every checkpoint is preceded by a
        flush, so a non-finite loss stops the run here, before any checkpoint could hold the weights it made."""
        first_bad_step = int(accelerator.gather(self.first_bad_step).min())
        if first_bad_step != NO_STEP:
            raise Diverged(f"the loss became NaN or infinite at step {first_bad_step}; the run stopped there and no "
                           "checkpoint holds weights from that step on", first_bad_step)
        counts = torch.cat([self.sums, self.sums.new_tensor([self.samples])])
        digit_ce, sum_ce, digit_ok, sum_ok, n = accelerator.reduce(counts, reduction="sum").tolist()
        elapsed = time.perf_counter() - self.started
        logged = {
            "train/loss": (digit_ce + sum_ce) / (2 * n),
            "train/digit_loss": digit_ce / n,
            "train/sum_loss": sum_ce / n,
            "train/digit_acc": digit_ok / n,
            "train/sum_acc": sum_ok / n,
            "train/samples_per_s": n / elapsed,
            "train/lr": lr,
            "epoch": epoch,
        }
        if self.scaled:  # every process skips the same steps (their gradients are the same after the all-reduce)
            logged["train/skipped_steps"] = int(self.skipped)
        self.sums.zero_()
        self.skipped.zero_()
        self.samples, self.started = 0, time.perf_counter()
        return logged


class TrainLog:
    """The training metrics' way to the tracker: each step goes into a window on the device, which is logged
    every `train.log_every` steps, at the end of each epoch and, if it holds steps, before each checkpoint (so
    the log of a resumed run has no gap)."""

    def __init__(self, accelerator: Accelerator, tracker: Tracker, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 steps_per_epoch: int) -> None:
        self.accelerator, self.tracker, self.scheduler, self.steps_per_epoch = accelerator, tracker, scheduler, steps_per_epoch
        self.window = TrainMetricsWindow(accelerator.device)

    def start_epoch(self) -> None:
        """A new window: its samples per second count training, not the validation before it."""
        self.window = TrainMetricsWindow(self.accelerator.device)

    def add(self, out: StepOutput, state: LoopState, batch: dict[str, torch.Tensor]) -> None:
        self.window.add(out, state.step, batch["label"], batch["number"])

    def flush(self, state: LoopState) -> dict[str, float]:
        """Log the window (every process takes part) and return what was logged."""
        logged = self.window.flush(self.accelerator, self.scheduler.get_last_lr()[0], state.step / self.steps_per_epoch)
        state.skipped_steps += logged.get("train/skipped_steps", 0)
        self.tracker.log(logged, state.step)
        return logged

    def flush_pending(self, state: LoopState) -> None:
        if self.window.pending:
            self.flush(state)
