"""Counter-based random streams: every random draw the data makes is a hash of named integers.

A sample's number, its augmentation warp and each epoch's sample order are `splitmix64` hashes of a key
(seed, stream id, epoch, ...) and the sample index, so they depend on nothing else: not world size, workers,
batch size, shuffle order or a resume. `STREAM_IDS` names every stream in one place. Its values are part of
every published figure: changing one changes the pairs, warps or order each run sees (tests pin them).
"""

from __future__ import annotations

import numpy as np

STREAM_IDS = {
    "order": 0,  # the train permutation of each epoch: key (train.seed, order, epoch)
    "train": 1,  # the numbers paired with train samples: key (train.seed, train, epoch)
    "val": 2,  # the numbers paired with val samples: key (data.split_seed, val, 0)
    "holdout": 2,  # which training images are held out as val: key (data.split_seed, holdout), two parts, so
    #                a stream apart from val's numbers although the id is the same
    "test": 3,  # the numbers paired with test samples: key (data.split_seed, test, 0)
    "augment": 7,  # each train sample's affine warp: key (train.seed, augment, epoch)
}
_MASK = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic is the point)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def stream_key(*parts: int) -> int:
    """Hash a tuple of ints (seed, stream id, epoch, ...) into one 64-bit key."""
    key = np.zeros(1, dtype=np.uint64)
    for part in parts:
        key = splitmix64(key ^ np.uint64(part & _MASK))
    return int(key[0])


def generator_seed(*parts: int) -> int:
    """A `torch.Generator` seed (63 bits) from a stream key, for draws torch makes (permutations)."""
    return stream_key(*parts) & ((1 << 63) - 1)
