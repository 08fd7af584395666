"""The sum dataset: (image, number) pairs with reproducible numbers, batched by tensor indexing.

`pair_numbers(seed, split, epoch, index)` is a counter-based hash (`mnist_sum.streams`), so a sample's
number depends on nothing else: not world size, workers, batch size, shuffle order or a resume.
Val and test always use epoch 0, so their pairs never change; train draws fresh numbers each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from mnist_sum.config import Config
from mnist_sum.errors import UsageError
from mnist_sum.sources import Splits, load_hf, load_idx
from mnist_sum.streams import STREAM_IDS, generator_seed, splitmix64, stream_key


def pair_numbers(seed: int, split: str, epoch: int, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The number 0..9 paired with each sample index: a pure function of (seed, split, epoch, index)."""
    key = np.uint64(stream_key(seed, STREAM_IDS[split], epoch))
    idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).astype(np.uint64)
    # The modulo bias of 2**64 mod 10 is about 1e-19: irrelevant.
    return torch.from_numpy((splitmix64(idx ^ key) % np.uint64(10)).astype(np.int64))


def split_train_val(images: torch.Tensor, labels: torch.Tensor, val_size: int, split_seed: int) -> Splits:
    """A fixed, seeded hold-out of `val_size` training images for model selection."""
    g = torch.Generator().manual_seed(generator_seed(split_seed, STREAM_IDS["holdout"]))
    order = torch.randperm(len(images), generator=g)
    val, train = order[:val_size].sort().values, order[val_size:].sort().values
    return {"train": (images[train], labels[train]), "val": (images[val], labels[val])}


def load_splits(cfg: Config) -> Splits:
    """train / val / test as uint8 images and int64 labels."""
    source = load_idx(cfg.data.idx_dir) if cfg.data.source == "idx" else load_hf(cfg.data.hf_dataset)
    images, labels = source["train"]
    if cfg.data.val_size >= len(images):
        raise UsageError(f"data.val_size={cfg.data.val_size} leaves no training images (the source has {len(images)})",
                         "choose a smaller data.val_size")
    splits = split_train_val(images, labels, cfg.data.val_size, cfg.data.split_seed)
    if cfg.data.train_limit:
        splits["train"] = tuple(t[: cfg.data.train_limit] for t in splits["train"])
    splits["test"] = source["test"]
    return splits


class SumDataset(Dataset):
    """(image, label, number, index) for one split; `__getitems__` serves a whole batch with one index op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, split: str, seed: int) -> None:
        self.images, self.labels, self.split, self.seed = images, labels, split, seed
        self.epoch = 0
        self._numbers: torch.Tensor | None = None  # this epoch's numbers for the whole split (2 ms to draw)

    def set_epoch(self, epoch: int) -> None:
        # Val and test keep epoch 0 so their pairs never change.
        if self.split == "train" and epoch != self.epoch:
            self.epoch, self._numbers = epoch, None

    def to(self, device: torch.device) -> SumDataset:
        """Keep the split on `device` (MNIST is 55 MB): batches are then cut where the model runs."""
        self.images, self.labels, self._numbers = self.images.to(device), self.labels.to(device), None
        return self

    def numbers(self) -> torch.Tensor:
        if self._numbers is None:
            self._numbers = pair_numbers(self.seed, self.split, self.epoch, torch.arange(len(self))).to(self.labels.device)
        return self._numbers

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        pos = index.to(self.images.device)
        # index_select: 15x faster than images[pos] for a batch of uint8 images
        return {
            "image": self.images.index_select(0, pos),
            "label": self.labels.index_select(0, pos),
            "number": self.numbers().index_select(0, pos),
            "index": index,
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


class EpochSampler(Sampler[int]):
    """Sample order as a function of (seed, epoch): a seeded permutation, or 0..n-1 when not shuffling."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(generator_seed(self.seed, STREAM_IDS["order"], self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_datasets(cfg: Config, splits: Splits) -> tuple[SumDataset, SumDataset, SumDataset]:
    """train / val / test datasets: train numbers follow train.seed, val and test pairs data.split_seed."""
    return (SumDataset(*splits["train"], "train", cfg.train.seed),
            SumDataset(*splits["val"], "val", cfg.data.split_seed),
            SumDataset(*splits["test"], "test", cfg.data.split_seed))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the order (sampler) and of the numbers (dataset).

    Accelerate's prepared loader forwards `set_epoch` to the dataset only when the sampler has none,
    so both are set here. Worker processes are started anew each epoch and copy the new value.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    else:
        loader.batch_sampler.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn: `__getitems__` already returns a batch (module-level so worker processes can pickle it)."""
    return batch


def make_loader(dataset: SumDataset, batch_size: int, *, seed: int, train: bool, num_workers: int = 0) -> DataLoader:
    """A loader of *global* batches; Accelerate (split_batches=True) hands each process its slice.

    `train`: shuffle by (seed, epoch) and drop the last partial batch, so every step has the same global batch
    size whatever the number of processes. Evaluation keeps the order and the last partial batch, and
    `gather_for_metrics` drops Accelerate's padding.
    """
    sampler = EpochSampler(len(dataset), seed, shuffle=train)
    batches = BatchSampler(sampler, batch_size, drop_last=train)
    # Each new iterator draws a base seed for its workers; from its own generator, so it never advances the
    # global RNG (dropout), which must match an uninterrupted run after a resume.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=keep_batch, num_workers=num_workers, generator=generator)
