"""Layers that compute the same training function on any number of processes.

- `GlobalBatchNorm2d`: BatchNorm whose training statistics are those of the whole global batch, whatever
  the number of processes it is spread over. Plain BatchNorm normalises each process's slice by itself:
  with 8 GPUs and a batch of 128 each would normalise 16 samples, a different (and noisier) function from
  one GPU's. Unlike torch's SyncBatchNorm it runs on every backend (gloo on CPU included) and takes uneven
  slices: each process all-reduces its sums and sample count.
- `KeyedDropout`: dropout whose mask for a sample is a hash of that sample's key (seed, epoch, index; see
  `mnist_sum.batches`), not a draw from the process's RNG, so a sample gets the same mask on any rank, in any
  batch, and after a resume.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from mnist_sum.streams import keyed_uniforms


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient (the gradient of a sum over processes is the sum of the gradients)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def processes() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch (see the module docstring); the same parameters and buffers, so
    weights move freely between it and `nn.BatchNorm2d`. On one process, or in eval mode, it is
    `nn.BatchNorm2d` itself (its fused kernel); the two paths compute the same function up to float rounding,
    which the 1- vs 2-process tests check."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or processes() == 1:
            return super().forward(x)
        # Sums around the running mean (the same on every process): E[(x-s)^2] - E[x-s]^2 loses less to
        # cancellation than E[x^2] - E[x]^2 when the mean is large next to the spread.
        shift = self.running_mean.view(1, -1, 1, 1)
        centred = x.float() - shift
        count = centred.new_full((1,), centred.numel() / centred.shape[1])
        local = torch.cat([centred.sum((0, 2, 3)), (centred * centred).sum((0, 2, 3)), count])
        total = _SumOverProcesses.apply(local)
        c = self.num_features
        n = total[-1]
        mean_c = total[:c] / n
        var = (total[c:2 * c] / n - mean_c * mean_c).clamp_min(0)
        out = (centred - mean_c.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        with torch.no_grad():  # as nn.BatchNorm2d: momentum average, the variance unbiased
            self.num_batches_tracked.add_(1)
            self.running_mean.add_(mean_c.detach(), alpha=self.momentum)
            unbiased = var.detach() * (n / (n - 1).clamp_min(1))
            self.running_var.mul_(1 - self.momentum).add_(unbiased * self.momentum)
        return out.to(x.dtype).contiguous(memory_format=_layout(x))


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class KeyedDropout(nn.Dropout):
    """Dropout with per-sample masks from `noise_key` ([B] int64, one key per sample): unit j of sample i is
    kept when the hash of (key_i, j) is at or above p. Without keys (evaluation) it is the identity; training
    without keys is a bug, not a fallback to the process's RNG."""

    def forward(self, x: torch.Tensor, noise_key: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if noise_key is None:
            raise ValueError("KeyedDropout in training needs the batch's noise_key")
        keep = (keyed_uniforms(0, noise_key, x[0].numel()) >= self.p).view_as(x)
        return x * keep / (1.0 - self.p)
