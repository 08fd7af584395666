"""Agreement between ranks: the main process's decisions, the batch a launch can split, the same buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, broadcast_object_list

from mnist_sum.config import Config
from mnist_sum.errors import ProjectError, UsageError

T = TypeVar("T")


def check_world(cfg: Config, world: int) -> None:
    """Any number of processes splits a global batch (mnist_sum.batches), as long as each gets a sample."""
    if cfg.train.global_batch_size < world:
        raise UsageError(f"train.global_batch_size={cfg.train.global_batch_size} leaves some of the {world} processes "
                         "without a sample", f"use at least {world}: one sample per process")


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


def same_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every process the main process's buffers (BatchNorm running statistics) before an evaluation.

    Every process computes them from the same global-batch statistics, but the all-reduce that sums those may
    round differently on different ranks; without this the ranks could evaluate models a rounding apart, and
    the saved weights would not be exactly the ones that scored the other ranks' part of the test set."""
    if accelerator.num_processes == 1:
        return
    for buffer in model.buffers():
        buffer.copy_(broadcast(buffer.detach().clone(), from_process=0))
