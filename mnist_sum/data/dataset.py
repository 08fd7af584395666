"""The sum dataset: (image, number) pairs with reproducible numbers, batched by tensor indexing.

`pair_numbers(seed, split, epoch, index)` is a counter-based hash (`mnist_sum.data.streams`), so a sample's
number depends on nothing else: not world size, workers, batch size, shuffle order or a resume.
Val and test always use epoch 0, so their pairs never change; train draws fresh numbers each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from mnist_sum.config import Config
from mnist_sum.data.sources import Splits, load_hf, load_idx
from mnist_sum.data.streams import STREAM_IDS, digits, generator_seed, stream_key
from mnist_sum.errors import UsageError


def pair_numbers(seed: int, split: str, epoch: int, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The number 0..9 paired with each sample index: a pure function of (seed, split, epoch, index), on the
    index's device."""
    index = index if isinstance(index, torch.Tensor) else torch.as_tensor(index)
    return digits(stream_key(seed, STREAM_IDS[split], epoch), index.long())


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
    """(image, label, number, index) for one split. `batch(rows)` serves a whole batch with one index op on the
    split's device; as a torch `Dataset` (`__getitems__`) it serves any DataLoader, workers included."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, split: str, seed: int) -> None:
        self.images, self.labels, self.split, self.seed = images, labels, split, seed
        self.epoch = 0
        self._numbers: torch.Tensor | None = None  # this epoch's numbers for the whole split

    def set_epoch(self, epoch: int) -> None:
        # Val and test keep epoch 0 so their pairs never change.
        if self.split == "train" and epoch != self.epoch:
            self.epoch, self._numbers = epoch, None

    def to(self, device: torch.device) -> SumDataset:
        """Keep the split on `device` (MNIST is 55 MB): batches are then cut where the model runs."""
        self.images, self.labels, self._numbers = self.images.to(device), self.labels.to(device), None
        return self

    @property
    def device(self) -> torch.device:
        return self.images.device

    def numbers(self) -> torch.Tensor:
        if self._numbers is None:
            self._numbers = pair_numbers(self.seed, self.split, self.epoch, torch.arange(len(self), device=self.device))
        return self._numbers

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples `rows` (int64, on the split's device); index_select, because advanced indexing
        (images[rows]) was many times slower for a batch of uint8 images on the CPU."""
        return {
            "image": self.images.index_select(0, rows),
            "label": self.labels.index_select(0, rows),
            "number": self.numbers().index_select(0, rows),
            "index": rows,
        }

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.batch(torch.as_tensor(indices, dtype=torch.int64, device=self.device))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def make_datasets(cfg: Config, splits: Splits) -> tuple[SumDataset, SumDataset, SumDataset]:
    """train / val / test datasets: train numbers follow train.seed, val and test pairs data.split_seed."""
    return (SumDataset(*splits["train"], "train", cfg.train.seed),
            SumDataset(*splits["val"], "val", cfg.data.split_seed),
            SumDataset(*splits["test"], "test", cfg.data.split_seed))
