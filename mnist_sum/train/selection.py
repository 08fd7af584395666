"""Which epoch's weights a run keeps: the latest, unless an earlier epoch is better on val beyond val's noise.

Plain "best val" lets one image of 5,000 pick weights that were not yet annealed (docs/results.md: Which
weights a run keeps, has the case that showed it). Two epochs
of one run differ on few val samples, so the noise of their difference is that of those few: McNemar's test
counts the samples only the kept weights get right (b) and those only the later weights get right (c). The
later weights replace the kept ones unless b - c > z * sqrt(b + c), i.e. unless the kept ones are better by
more than `z` standard errors of the difference. z = 0 is best-val (ties to the later epoch); a large z keeps
the last epoch whatever val says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def later_replaces(kept_wrong: Iterable[int], later_wrong: Iterable[int], z: float) -> bool:
    """Whether a later epoch's weights replace the kept ones. `*_wrong`: the val samples each gets wrong (on
    either head), by index."""
    kept, later = set(kept_wrong), set(later_wrong)
    only_kept_right = len(later - kept)
    only_later_right = len(kept - later)
    return only_kept_right - only_later_right <= z * math.sqrt(only_kept_right + only_later_right)


def select_epoch(wrong_by_epoch: Sequence[Iterable[int]], z: float) -> int:
    """The index of the epoch a run keeps, given each epoch's wrong val samples in order (the rule applied as
    the run applies it, one epoch at a time)."""
    kept = 0
    for epoch in range(1, len(wrong_by_epoch)):
        if later_replaces(wrong_by_epoch[kept], wrong_by_epoch[epoch], z):
            kept = epoch
    return kept
