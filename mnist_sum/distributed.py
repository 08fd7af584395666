"""Process-group plumbing: the Accelerator, agreement between ranks, lost peers, and graceful stop on signals."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list

from mnist_sum.config import Config
from mnist_sum.cpu import keep_freed_memory, set_threads
from mnist_sum.errors import LaunchError, LostPeer, ProjectError, UsageError
from mnist_sum.launcher import restart_count

T = TypeVar("T")


def make_accelerator(log_with: list[str] | None = None, timeout_s: int = 300, cpu_threads: int = 0,
                     mixed_precision: str | None = None) -> Accelerator:
    """The Accelerator every command uses. `mixed_precision` None: what `accelerate launch` set, else "no".
    `log_with`: Accelerate tracker names; one that is not installed is an error (Accelerate would drop it)."""
    # split_batches: loaders yield *global* batches and each process takes its slice, so the number of
    # steps per epoch and the LR schedule are the same for any number of processes.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # `accelerate launch --multi_gpu` on a machine without GPUs would start independent single-process
    # runs; asking for the CPU makes them one data-parallel job over gloo instead.
    cpu = world > 1 and not torch.cuda.is_available()
    _group_of_this_attempt(timeout_s)
    # The logging folder (TensorBoard's) is the run folder's, set once that is known; Accelerate wants one now.
    with warnings.catch_warnings():  # a tracker that is not installed is one line below; Accelerate's warning repeats it
        warnings.filterwarnings("ignore", message=r"`log_with=.*` was passed but no supported trackers")
        accelerator = Accelerator(cpu=cpu, log_with=log_with or None, mixed_precision=mixed_precision,
                                  project_config=ProjectConfiguration(logging_dir="tensorboard"),
                                  dataloader_config=DataLoaderConfiguration(split_batches=True),
                                  kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))])
    missing = [name for name in log_with or () if name not in {str(t) for t in accelerator.log_with}]
    if missing:
        raise UsageError(f"tracking.log_with lists {missing[0]}, which is not installed here",
                         f"pip install {missing[0].replace('_', '-')}, or leave it out of tracking.log_with")
    if accelerator.num_processes != world:
        raise LaunchError(f"launched {world} processes but Accelerate formed a group of {accelerator.num_processes}",
                          "check the accelerate launch flags (--multi_gpu, --num_processes, --num_machines)")
    if accelerator.device.type == "cpu":
        set_threads(cpu_threads)
        keep_freed_memory()
    return accelerator


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


def check_world(cfg: Config, world: int) -> None:
    for key in ("global_batch_size", "eval_batch_size"):
        size = getattr(cfg.train, key)
        if size % world:
            raise UsageError(f"train.{key}={size} does not split over {world} processes", f"use a multiple of {world}")


def main_decides(accelerator: Accelerator, decide: Callable[[], T]) -> T:
    """Run `decide()` on the main process and share its answer (or its ProjectError) with every process,
    so all ranks stop together instead of some waiting forever in a collective."""
    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", decide())
        except ProjectError as err:
            box[0] = ("error", err)
    if accelerator.num_processes > 1:
        broadcast_object_list(box)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def average_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average BatchNorm running statistics over processes.

    Each process updates them from its own slice of the batch (DDP only copies rank 0's at the start of
    each forward), so without this every rank would evaluate a slightly different model, and the saved
    weights would not be the ones that scored half the test set.
    """
    if accelerator.num_processes == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(accelerator.reduce(buffer.detach().clone(), reduction="mean"))


class StopRequest:
    """SIGTERM (how clusters preempt jobs) or SIGINT (Ctrl-C) asks the loop to checkpoint and stop at the
    next step boundary; a second signal stops at once. Ranks may receive the signal at different steps,
    so `agreed()` makes every rank stop at the same one. A context manager: leaving it restores the
    handlers that were there before."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.signum: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

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
        """Put the previous handlers back (once; later calls do nothing)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
