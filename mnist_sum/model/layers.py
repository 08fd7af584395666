"""Layers that compute the same training function on any number of processes, with no collective of their own.

- `GhostBatchNorm2d`: BatchNorm whose training statistics are those of fixed groups of samples of the global
  batch, each group on one process, so a sample is normalised the same way whatever the number of processes;
  the running statistics are kept in per-process shares and summed at log steps (`sum_running_stats`).
  Plain BatchNorm normalises each process's slice by itself (8 GPUs with a batch of 128: 16 samples each, a
  different function from one GPU's 128); BatchNorm over the global batch, as torch's SyncBatchNorm, costs two
  all-reduces per layer per step, in sequence with the layers (docs/distributed.md has the candidates measured).
- `KeyedDropout`: dropout whose mask for a sample is a hash of that sample's key (seed, epoch, index; see
  `mnist_sum.data.batches`), not a draw from the process's RNG, so a sample gets the same mask on any rank, in any
  batch, and after a resume.
- `norm_layer`: the normalisation `model.norm` names (ghost BatchNorm, LayerNorm or none: none of them needs a
  collective).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mnist_sum.data.streams import keyed_uniforms


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of fixed groups of `group_size` consecutive samples of the
    global batch ("ghost" batch norm). A process's slice holds whole groups (mnist_sum.data.batches cuts slices on
    group boundaries), so each sample is normalised the same way on any number of processes, without a
    collective: the only one a step needs is DDP's gradient all-reduce.

    The running statistics (for evaluation) are an exponential average over steps of the mean of the step's
    group statistics. That is linear, so each process keeps its own share of them (`share_mean`, `share_var`:
    what its groups added, and on process 0 what was there before) and `sum_running_stats` adds the shares up,
    once per log line, evaluation and checkpoint instead of every step. The same parameters and buffers as
    `nn.BatchNorm2d`, whose kernel each group runs; in evaluation it is `nn.BatchNorm2d` itself."""

    def __init__(self, num_features: int, group_size: int, groups_per_step: int = 1) -> None:
        super().__init__(num_features)
        self.group_size = group_size
        self.groups_per_step = groups_per_step
        """Groups in a global batch: each group's statistics weigh 1 / groups_per_step in a step's average."""
        self.register_buffer("share_mean", torch.zeros(num_features), persistent=False)
        self.register_buffer("share_var", torch.zeros(num_features), persistent=False)
        self.shares_valid = False  # the shares start from the running statistics at the next training step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        groups = x.split(self.group_size)
        # With momentum 1, the kernel writes each group's mean and unbiased variance into its row of `stats`
        # (from zeros, not garbage: it computes 0 x old + 1 x new).
        stats = torch.zeros(len(groups), 2, self.num_features, device=x.device)
        out = torch.cat([F.batch_norm(g, stats[i, 0], stats[i, 1], self.weight, self.bias, True, 1.0, self.eps)
                         for i, g in enumerate(groups)])
        with torch.no_grad():
            if not self.shares_valid:
                _start_shares(self)
            added = stats.sum(0) * (self.momentum / self.groups_per_step)
            self.share_mean.mul_(1 - self.momentum).add_(added[0])
            self.share_var.mul_(1 - self.momentum).add_(added[1])
            self.num_batches_tracked.add_(1)
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.shares_valid = False  # loaded running statistics are the whole of them


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _start_shares(norm: GhostBatchNorm2d) -> None:
    """Process 0's share is all of the running statistics, every other process's nothing."""
    first = float(_rank() == 0)
    norm.share_mean.copy_(norm.running_mean * first)
    norm.share_var.copy_(norm.running_var * first)
    norm.shares_valid = True


@torch.no_grad()
def sum_running_stats(model: nn.Module) -> None:
    """Make every ghost BatchNorm's running statistics the sum of all processes' shares, the same on every
    process: one all_gather of every layer's shares, summed by the same op on every rank (an all-reduce could
    round differently on different ranks). Then process 0's share is the sum and the others' zero. Idempotent; with one process,
    a copy. Called at every log line, evaluation and checkpoint, so an interrupted run and an uninterrupted one
    sum at the same steps and keep byte-identical statistics."""
    norms = [m for m in model.modules() if isinstance(m, GhostBatchNorm2d)]
    if not norms:
        return
    for norm in norms:
        if not norm.shares_valid:
            _start_shares(norm)
    shares = torch.cat([torch.cat([n.share_mean, n.share_var]) for n in norms])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.empty_like(shares) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, shares)
        total = torch.stack(gathered).sum(0)
    else:
        total = shares
    first = float(_rank() == 0)
    for norm, piece in zip(norms, total.split([2 * n.num_features for n in norms])):
        mean, var = piece.split(norm.num_features)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.share_mean.copy_(mean * first)
        norm.share_var.copy_(var * first)


def norm_layer(kind: str, channels: int, group_size: int, groups_per_step: int = 1) -> nn.Module:
    """The normalisation after a convolution: ghost BatchNorm, LayerNorm over (channels, height, width) of each
    sample, or none."""
    if kind == "ghost":
        return GhostBatchNorm2d(channels, group_size, groups_per_step)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


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
