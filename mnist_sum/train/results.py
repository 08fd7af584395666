"""results.json: one run's record, built in one function and read back by `mnist-sum-evaluate` and bench/table.py.

torch and Accelerate are imported where the record is made (in training, where they are loaded already), so
that reading records (bench/table.py) stays a plain-Python import.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from mnist_sum.config import PROJECT_ROOT, Config
from mnist_sum.train.clock import RunClock
from mnist_sum.train.state import LoopState

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


class Results(TypedDict):
    config: str  # the config file the run started from
    test: dict[str, Any]  # mnist_sum.model.scoring.metrics of the test split, on the best-val weights
    best_val: dict[str, Any]  # val metrics of the selected epoch, with its epoch and step
    steps: int
    epochs: int
    global_batch_size: int
    resumed_from: str | None  # the step_* folder this session resumed from
    train_time_s: float  # training and validation, over every session
    flops_per_sample: float  # forward and backward
    train_flops: float  # every sample of every step, on all processes
    train_flops_per_s: float
    skipped_steps: int  # fp16: steps the grad scaler skipped
    wall_time_s: float  # this session, from the start of train() to the record
    phases_s: dict[str, float]  # this session's phases (process start-up comes before them)
    git: dict[str, Any] | None  # {"commit", "dirty"}
    world_size: int
    device: str
    mixed_precision: str
    peak_memory_mb: float
    versions: dict[str, str]
    launch_flags: dict[str, Any]  # the accelerate launch flags the run honoured (mnist_sum.distributed.launch_flags)
    threads: int  # torch's CPU threads per process


def results_record(cfg: Config, state: LoopState, test: dict[str, Any], clock: RunClock, resumed_from: str | None,
                   git: dict[str, Any] | None, accelerator: Accelerator,
                   launch_flags: dict[str, Any] | None = None) -> Results:
    import accelerate  # here: reading records (bench/table.py) stays free of torch (module docstring)
    import torch

    train_flops = state.flops_per_sample * state.step * cfg.train.global_batch_size
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return Results(
        config=state.config_name, test=test, best_val=state.best_val, steps=state.step, epochs=cfg.train.epochs,
        global_batch_size=cfg.train.global_batch_size, resumed_from=resumed_from,
        train_time_s=round(state.train_time_s, 2), flops_per_sample=state.flops_per_sample, train_flops=train_flops,
        train_flops_per_s=train_flops / state.train_time_s, skipped_steps=state.skipped_steps,
        wall_time_s=round(clock.wall_time(), 2), phases_s=clock.phases(), git=git,
        world_size=accelerator.num_processes, device=f"{device.type} ({name})",
        mixed_precision=accelerator.mixed_precision, peak_memory_mb=round(peak_memory_bytes(device) / 2**20, 1),
        versions={"python": sys.version.split()[0], "torch": torch.__version__, "accelerate": accelerate.__version__},
        launch_flags=launch_flags or {}, threads=torch.get_num_threads())


def read_results(run_dir: Path) -> Results:
    return json.loads((run_dir / "results.json").read_text())


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """The commit the code ran from and whether the tree differed from it (uncommitted or untracked files);
    None outside a git checkout or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process held: on an accelerator its allocator's peak, on the CPU the peak resident
    size of the whole process (Python, data and all)."""
    if device.type == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    import torch

    return torch.accelerator.max_memory_allocated(device)
