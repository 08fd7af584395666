"""FLOPs of the model's forward and backward, counted by torch on one real step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


def count_flops(step: Callable[[], T]) -> tuple[T, int]:
    """Run `step` once, counting the FLOPs of the model's forward and backward with torch's FlopCounterMode
    (matrix products and convolutions; the augmentation and the optimizer's elementwise update are not
    model FLOPs and are not counted). Counting observes the ops; it changes neither them nor their results."""
    with FlopCounterMode(display=False) as counter:
        out = step()
    return out, counter.get_total_flops()
