"""How the process group is formed: after an elastic restart, and with NCCL error handling that ends in a
Python exception (so a lost peer is one line, as under gloo)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from mnist_sum.launcher import restart_count


def form_group(timeout_s: int) -> None:
    """Settings and workarounds that must come before Accelerate creates the process group."""
    # torch's default for NCCL (3) tears the process down from its watchdog thread when a collective fails or
    # times out: no Python exception, so no one-line error. 2 aborts the communicator only; the main thread's
    # next collective then raises, and peers.peers_watched turns that into the same line as a gloo error. (Read
    # when the NCCL group is created; a value the user set wins.)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    _group_of_this_attempt(timeout_s)


def _group_of_this_attempt(timeout_s: int) -> None:
    """After an elastic restart, form the process group under keys of this attempt only.

    torchrun's static rendezvous (Accelerate's) keeps one agent store for every attempt, without a prefix per
    attempt, so a restarted group can read the dead group's Gloo addresses from it and fail to connect
    ("connectFullMesh failed ... Connection refused"; 2 restarts in 3 on the development machine). Accelerate
    uses a process group that already exists."""
    restart = restart_count()
    if not restart or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or torch.distributed.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s)
    agent_store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                             timeout=timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                         store=torch.distributed.PrefixStore(f"mnist-sum/attempt_{restart}", agent_store),
                                         rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                         timeout=timeout)
