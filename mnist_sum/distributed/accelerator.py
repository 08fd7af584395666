"""The Accelerator every command uses, and the checks that it formed the group the launch asked for."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    LoggerType,
    ProjectConfiguration,
)

from mnist_sum.distributed.cpu import keep_freed_memory, set_threads
from mnist_sum.distributed.launch_flags import check_launch_flags
from mnist_sum.distributed.process_group import form_group
from mnist_sum.errors import LaunchError, UsageError


def _check_trackers(names: list[str]) -> None:
    """Every name one of Accelerate's trackers, and installed (Accelerate would drop a missing one silently)."""
    known = [t.value for t in LoggerType if t != LoggerType.ALL]
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in known:
            raise UsageError(f"tracking.log_with: unknown tracker {name!r}", f"choose from {', '.join(known)}")
        if name not in available:
            raise UsageError(f"tracking.log_with lists {name}, which is not installed here",
                             f"pip install {name.replace('_', '-')}, or leave it out of tracking.log_with")


def make_accelerator(log_with: list[str] | None = None, timeout_s: int = 300, cpu_threads: int = 0,
                     mixed_precision: str | None = None) -> Accelerator:
    """The Accelerator every command uses. `mixed_precision` None: what `accelerate launch` set, else "no".
    `log_with`: Accelerate tracker names; one that is not installed is an error (Accelerate would drop it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # `accelerate launch --multi_gpu` on a machine without GPUs would start independent single-process
    # runs; asking for the CPU makes them one data-parallel job over gloo instead.
    cpu = world > 1 and not torch.cuda.is_available()
    check_launch_flags(gpu=torch.cuda.is_available())
    _check_trackers(log_with or [])
    form_group(timeout_s)
    accelerator = Accelerator(
        cpu=cpu, log_with=log_with or None, mixed_precision=mixed_precision,
        # Accelerate takes TensorBoard's logging folder here, before the run folder is known (the processes agree
        # on that through this Accelerator): a stand-in that mnist_sum.tracking.trackers.Tracker.start replaces with the
        # run folder's before init_trackers reads it. Accelerate has no other place to give it later.
        project_config=ProjectConfiguration(logging_dir="tensorboard"),
        # The data is divided by mnist_sum.data.batches, not by Accelerate; split_batches only makes the prepared
        # LR schedule step once per optimizer step (without it, once per process).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s)),
                         # Each process keeps its own share of the BatchNorm running statistics, summed at log
                         # steps (layers.GhostBatchNorm2d): rank 0's buffers broadcast before every forward would
                         # overwrite the other shares (and cost a collective per step).
                         DistributedDataParallelKwargs(broadcast_buffers=False)])
    if accelerator.num_processes != world:
        raise LaunchError(f"launched {world} processes but Accelerate formed a group of {accelerator.num_processes}",
                          "check the accelerate launch flags (--multi_gpu, --num_processes, --num_machines)")
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        # Accelerate takes fp16 on the CPU without complaint, then neither autocasts nor scales: fp32 by another name.
        raise UsageError(f"mixed precision fp16 needs a GPU; on {accelerator.device.type} it would train in fp32",
                         "use --mixed_precision bf16 (or no) on the CPU")
    if accelerator.device.type == "cpu":
        set_threads(cpu_threads)
        keep_freed_memory()
    return accelerator


def use_deterministic_algorithms() -> None:
    """`train.deterministic`: the same result from the same inputs, on a GPU too (CPU kernels already are).

    cuBLAS needs a fixed workspace for that, set before its first use; an op without a deterministic kernel
    warns instead of stopping the run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
