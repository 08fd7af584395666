"""Which samples each process takes: its slice of every global training batch, its part of an eval split.

This is the one place where data is divided among processes. Not a DataLoader through `accelerator.prepare`,
for two reasons: Accelerate splits a global batch only into equal slices (`split_batches` needs a batch size
that is a multiple of the process count, so 128 would refuse 3, 5, 6 or 7 processes), and a DataLoader builds
each batch's indices on the host and copies them to the device, a host round trip every step. Here the
epoch's order and every per-sample random draw (number, warp, dropout key) are made on the training device
once per epoch, and a step's batch is a slice of them: nothing crosses to or from the host inside an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from mnist_sum.data.dataset import SumDataset
from mnist_sum.data.streams import STREAM_IDS, generator_seed, hashed, stream_key, uniforms

WARP_PARAMS = 5  # rotation, scale, shear, shift x, shift y (mnist_sum.data.augment)


def shard(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s part of n items: parts in rank order, sizes differing by at most one (the
    first n mod world ranks take one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_sizes(n: int, world: int) -> list[int]:
    return [stop - start for start, stop in (shard(n, world, r) for r in range(world))]


class TrainBatches:
    """This process's slice of each global training batch of an epoch, in order; `len()` is the number of steps.

    A global batch is `global_batch_size` consecutive samples of the epoch's permutation (a function of
    (seed, epoch)); the last partial one is dropped, so every step has the same global batch. Rank r takes the
    rows of `shard(global_batch_size / unit, world, r)` units of `unit` samples: with ghost BatchNorm a unit is
    one statistics group, which must not be split between processes (mnist_sum.model.layers). The global batches,
    their samples, numbers, warps and dropout keys are the same for any number of processes."""

    def __init__(self, dataset: SumDataset, global_batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 unit: int = 1) -> None:
        assert global_batch_size % unit == 0, "the config checks that a global batch holds whole groups"
        self.dataset, self.global_batch_size, self.seed = dataset, global_batch_size, seed
        first, last = shard(global_batch_size // unit, world, rank)
        self.rows = first * unit, last * unit
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset) // self.global_batch_size

    def set_epoch(self, epoch: int) -> None:
        """Draw the epoch's order, numbers, warps and dropout keys (on the dataset's device, once)."""
        if epoch == self.epoch:
            return
        device, n = self.dataset.device, len(self.dataset)
        g = torch.Generator().manual_seed(generator_seed(self.seed, STREAM_IDS["order"], epoch))
        self.order = torch.randperm(n, generator=g).to(device)  # one copy per epoch
        self.dataset.set_epoch(epoch)
        every = torch.arange(n, device=device)
        self.warps = uniforms(stream_key(self.seed, STREAM_IDS["augment"], epoch), every, WARP_PARAMS)
        self.noise_keys = hashed(stream_key(self.seed, STREAM_IDS["dropout"], epoch), every)
        self.epoch = epoch

    def batches(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The epoch's batches from step `start` on (a resumed epoch skips those already trained)."""
        assert self.epoch is not None, "set_epoch first"
        first, last = self.rows
        for step in range(start, len(self)):
            offset = step * self.global_batch_size
            rows = self.order[offset + first: offset + last]  # a view: no data leaves the device
            yield self.dataset.batch(rows) | {"warp": self.warps.index_select(0, rows),
                                              "noise_key": self.noise_keys.index_select(0, rows)}


class EvalBatches:
    """This process's part of an eval split (contiguous, in index order, sizes differing by at most one), in
    batches of about `eval_batch_size` / processes; `sizes` are every rank's part, for gathering."""

    def __init__(self, dataset: SumDataset, eval_batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.dataset = dataset
        self.start, self.stop = shard(len(dataset), world, rank)
        self.batch_size = math.ceil(eval_batch_size / world)
        self.sizes = shard_sizes(len(dataset), world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # An empty part (more processes than samples) still yields one empty batch, so every process has
        # columns of the right types to take part in the gather.
        rows = torch.arange(self.start, self.stop, device=self.dataset.device)
        for chunk in rows.split(self.batch_size):
            yield self.dataset.batch(chunk)
