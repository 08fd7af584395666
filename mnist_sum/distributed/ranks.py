"""Agreement between ranks: the main process's decisions and the batch a launch can split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_sum.config import Config
from mnist_sum.errors import ProjectError, UsageError

T = TypeVar("T")


def check_world(cfg: Config, world: int) -> None:
    """Any number of processes splits a global batch (mnist_sum.data.batches), as long as each gets a sample, or with
    ghost BatchNorm a whole statistics group."""
    unit = cfg.model.norm_unit
    if cfg.train.global_batch_size < world * unit:
        what = "a sample" if unit == 1 else f"a BatchNorm group of {unit} (model.norm_group)"
        fix = (f"use at least {world}: one sample per process" if unit == 1 else
               f"use train.global_batch_size of at least {world * unit}; a smaller model.norm_group also does, but "
               "changes the function trained")
        raise UsageError(f"train.global_batch_size={cfg.train.global_batch_size} leaves some of the {world} processes "
                         f"without {what}", fix)


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
