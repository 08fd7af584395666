"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from mnist_sum.config import OptimConfig


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
    """AdamW and its LR schedule over `total_steps`.

    Fused AdamW (CPU and GPU): its step counters live on the parameters' device and its update is one kernel,
    so a step reads nothing back to the host (the default foreach AdamW keeps the counters on the host and
    reads them every step), and under fp16 the grad scaler hands it the inf check as a tensor instead of
    reading it on the host."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.schedule, cfg.warmup_fraction))
    return optimizer, scheduler
