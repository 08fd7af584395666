"""Graceful stop on SIGTERM (how clusters preempt jobs) and SIGINT (Ctrl-C)."""

from __future__ import annotations

import signal
from typing import Any

import torch
from accelerate import Accelerator


class StopRequest:
    """SIGTERM or SIGINT asks the loop to checkpoint and stop; a second signal stops at once. Ranks may receive
    the signal at different steps, so `agreed()` makes every rank stop at the same one. It costs a collective
    and a host read, so the loop asks only at log steps (every `train.log_every` steps), never in between.
    The handlers are installed by `install()` (or entering it as a context manager) and put back by `restore()`
    (or leaving it)."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self) -> bool:
        """Has any process been asked to stop? Every process gets the same answer."""
        local = self.signum is not None
        if self.accelerator.num_processes == 1:
            return local
        flag = torch.tensor([float(local)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def restore(self) -> None:
        """Put the previous handlers back (once; later calls, or a call before `install()`, do nothing)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
