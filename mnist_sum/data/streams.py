"""Counter-based random streams: every random draw of training is a hash of named integers.

A sample's number, its augmentation warp, its dropout masks and each epoch's sample order are `splitmix64`
hashes of a key (seed, stream id, epoch) and the sample index, so they depend on nothing else: not world
size, workers, batch size, shuffle order or a resume. `STREAM_IDS` names every stream in one place. Its
values are part of every published figure: changing one changes the pairs, warps or order each run sees
(tests pin them).

The hash runs in torch on the training device (int64 arithmetic wraps like uint64; shifts are made logical
by masking), so drawing a batch's randomness never sends data to or from the host. Keys are Python ints,
made on the host once per epoch.
"""

from __future__ import annotations

import torch

STREAM_IDS = {
    "order": 0,  # the train permutation of each epoch: key (train.seed, order, epoch)
    "train": 1,  # the numbers paired with train samples: key (train.seed, train, epoch)
    "val": 2,  # the numbers paired with val samples: key (data.split_seed, val, 0)
    "holdout": 2,  # which training images are held out as val: key (data.split_seed, holdout), two parts, so
    #                a stream apart from val's numbers although the id is the same
    "test": 3,  # the numbers paired with test samples: key (data.split_seed, test, 0)
    "augment": 7,  # each train sample's affine warp: key (train.seed, augment, epoch)
    "dropout": 8,  # each train sample's dropout masks: key (train.seed, dropout, epoch)
}
_MASK = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds the same bits."""
    value &= _MASK
    return value - (1 << 64) if value >> 63 else value


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors holding uint64 bit patterns (wrapping arithmetic is the point)."""
    x = x + _signed(_GOLDEN)
    x = (x ^ _shr(x, 30)) * _signed(_MIX1)
    x = (x ^ _shr(x, 27)) * _signed(_MIX2)
    return x ^ _shr(x, 31)


def stream_key(*parts: int) -> int:
    """Hash a tuple of ints (seed, stream id, epoch, ...) into one 64-bit key (0 <= key < 2**64). On the host,
    once per epoch: the same `splitmix64` on one value."""
    key = 0
    for part in parts:
        key = int(splitmix64(torch.tensor(_signed(key ^ (part & _MASK))))) & _MASK
    return key


def generator_seed(*parts: int) -> int:
    """A `torch.Generator` seed (63 bits) from a stream key, for draws torch makes (permutations)."""
    return stream_key(*parts) & ((1 << 63) - 1)


def hashed(key: int, counter: torch.Tensor) -> torch.Tensor:
    """64 random bits (as int64) for each counter value (int64, any device): splitmix64(counter ^ key)."""
    return splitmix64(counter ^ _signed(key))


def digits(key: int, index: torch.Tensor) -> torch.Tensor:
    """One number 0..9 per index: the unsigned 64-bit hash mod 10 (its bias of 2**64 mod 10 is about 1e-19)."""
    bits = hashed(key, index)
    high, low = _shr(bits, 32), bits & 0xFFFFFFFF  # unsigned = high * 2**32 + low, both non-negative
    return (high % 10 * 6 + low % 10) % 10  # 2**32 mod 10 = 6


def uniforms(key: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """[len(index), count] float32 in [-1, 1), a pure function of (key, index): 53 random bits each, exact in
    float64 before the rounding to float32."""
    counter = index.long().unsqueeze(1) * count + torch.arange(count, device=index.device)
    bits = _shr(hashed(key, counter), 11)
    return (bits.double() / 2.0**52 - 1.0).float()


def keyed_uniforms(key: int, sample_keys: torch.Tensor, count: int) -> torch.Tensor:
    """[B, count] in [0, 1), `count` draws per sample from its own key ([B] int64, e.g. a batch's noise_key):
    24 bits of hash of (key, sample_key * count + j) each, exact in float32. Dropout masks (key 0) and the
    corruptions (keys 1 and 2) draw from the same sample key with different `key`s. 24 bits in float32, not
    `uniforms`' 53 in float64: these are drawn on the device at every step, and float64 is slow on GPUs."""
    counter = sample_keys.unsqueeze(1) * count + torch.arange(count, device=sample_keys.device)
    return (hashed(key, counter) & 0xFFFFFF).float() / 2.0**24
