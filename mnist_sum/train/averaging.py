"""An exponential moving average of the network's weights, the weights a run validates and keeps.

The weights at one step carry the noise of that step's batch; their average over the last steps does not,
and it costs one fused lerp per step on the device (no host read: the decay is a Python number). The best
single MNIST nets keep such an average. Each process updates its own copy from the same weights, so every
process holds the same average on any number of processes; checkpoints save it (`average.safetensors`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """`module`: a copy of the network whose parameters are the average

        average <- average + (1 - d) (weights - average),  d = min(decay, (1 + n) / (10 + n))

    after the n-th update. The warm-up of d (as in TensorFlow's ExponentialMovingAverage with num_updates)
    keeps the first steps' random weights from lingering in the average. Buffers (BatchNorm running
    statistics) are not averaged: `module_for_eval` copies the network's own in."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(network).eval().requires_grad_(False)
        self.updates = 0
        self._mine = list(self.module.parameters())

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._mine, [p.detach() for p in network.parameters()], 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def module_for_eval(self, network: nn.Module) -> nn.Module:
        """The averaged weights with the network's buffers, ready to evaluate."""
        for mine, theirs in zip(self.module.buffers(), network.buffers()):
            mine.copy_(theirs)
        return self.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.module.named_parameters()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average saved after `updates` updates (a checkpoint's step)."""
        for name, p in self.module.named_parameters():
            p.copy_(tensors[name])
        self.updates = updates
