"""A lost peer (a process that died, hung past the timeout or lost its link) as one line, not a traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator

from mnist_sum.errors import LostPeer


def lost_peer(err: BaseException) -> bool:
    """Is this the error a collective raises when another process died, hung past the timeout, or lost its link?"""
    text = str(err)
    return isinstance(err, RuntimeError) and (
        (torch.distributed.is_available() and isinstance(err, torch.distributed.DistError))
        or any(s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out")))


@contextmanager
def peers_watched(accelerator: Accelerator) -> Iterator[None]:
    """With several processes, turn the error of a collective whose peer died or hung into `LostPeer`: one
    line, exit code 1. (Decided by the process count, not by asking torch.distributed: the exit path may
    already have ended the process group when the error arrives here.)"""
    try:
        yield
    except RuntimeError as err:
        if accelerator.num_processes == 1 or not lost_peer(err):
            raise
        raise LostPeer(os.environ.get("RANK", "?"), str(err).strip().splitlines()[0][:200]) from err
