"""One training step: augment, forward, loss, backward, (unscale, clip), update, schedule.

The trainer and bench/speed.py both call `train_step`, so the benchmark times exactly the step that training
runs. The step never waits on the host: its batch, warps and dropout keys are already on the device
(`mnist_sum.data.batches`), the optimizer is fused (`mnist_sum.train.schedule`), and what the loop wants to know (losses,
hits, a skipped fp16 step) comes back as device tensors, read only at log steps (`mnist_sum.train.window`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate import Accelerator

from mnist_sum.config import Config
from mnist_sum.data.augment import corrupt, warp
from mnist_sum.model.network import sum_loss
from mnist_sum.train.averaging import WeightAverage


class StepOutput(NamedTuple):
    digit_logits: torch.Tensor
    sum_logits: torch.Tensor
    digit_ce: torch.Tensor
    """Per sample of this process's slice."""
    sum_ce: torch.Tensor
    skipped: torch.Tensor | None = None
    """fp16 only: True when the gradients held inf/NaN and the grad scaler skipped the update."""


def _micro_batches(batch: dict[str, torch.Tensor], count: int, unit: int, accelerator: Accelerator,
                   model: torch.nn.Module):
    """`batch` cut into `count` parts of whole `unit`s (empty ones left out), each yielded inside
    `accelerator.no_sync` except the last, so gradients are exchanged once per step."""
    units = len(batch["label"]) // unit
    cuts = [unit * round(k * units / count) for k in range(count + 1)]
    spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    for i, (a, b) in enumerate(spans):
        part = {key: value[a:b] for key, value in batch.items()}
        if i < len(spans) - 1:
            with accelerator.no_sync(model):
                yield part
        else:
            yield part


def _one_pass(model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Accelerator,
              cfg: Config) -> tuple[torch.Tensor, ...]:
    """Forward and backward of one (micro-)batch; its logits and per-sample cross-entropies."""
    images = batch["image"]
    if cfg.augment.enabled:  # each sample's warp is a function of (seed, epoch, index), like its number
        images = warp(images, cfg.augment, batch["warp"], batch["noise_key"])
    if cfg.augment.corrupt:  # so are its corruption and its noise (from its noise_key)
        images = corrupt(images.float(), cfg.augment.corrupt, batch["noise_key"])
    digit_logits, sum_logits = model(images, batch["number"], batch["noise_key"])
    _, digit_ce, sum_ce = sum_loss(digit_logits, sum_logits, batch["label"], batch["number"],
                                   cfg.optim.label_smoothing, reduction="none")
    # The mean over the *global* batch: DDP averages the processes' gradients, and slices may differ in size by
    # one, so each process scales its sum by processes / global batch (not its own mean, which would weigh the
    # samples of a smaller slice more).
    loss = (digit_ce.sum() + sum_ce.sum()) * (accelerator.num_processes / (2 * cfg.train.global_batch_size))
    accelerator.backward(loss)
    return digit_logits, sum_logits, digit_ce, sum_ce


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, accelerator: Accelerator, cfg: Config,
               average: WeightAverage | None = None) -> StepOutput:
    """One optimizer step on `batch`, this process's slice of the global batch; then the weights' moving
    average, if any, takes the new weights in."""
    # Gradient accumulation: micro-batches of whole normalisation groups, gradients summed (DDP's all-reduce
    # only after the last one), one optimizer step. Each micro-batch's loss is scaled as the whole step's is,
    # so their sum is the step's loss.
    parts = [_one_pass(model, micro, accelerator, cfg) for micro in
             _micro_batches(batch, cfg.train.micro_batches, cfg.model.norm_unit, accelerator, model)]
    digit_logits, sum_logits, digit_ce, sum_ce = parts[0] if len(parts) == 1 else map(torch.cat, zip(*parts))
    scaler = accelerator.scaler  # fp16 on a GPU
    grad_norm = None
    if cfg.optim.grad_clip:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)  # unscales first
    elif scaler is not None:
        accelerator.unscale_gradients()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()  # under fp16 the scaler skips it (inside the fused kernel) when a gradient is inf/NaN
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if average is not None:
        average.update(model)
    skipped = ~torch.isfinite(grad_norm) if scaler is not None else None  # the scaler's own test: any inf/NaN
    return StepOutput(digit_logits, sum_logits, digit_ce, sum_ce, skipped)
