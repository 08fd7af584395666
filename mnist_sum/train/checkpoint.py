"""Checkpoints, in one object the loop calls once per step and once per epoch (`Checkpointer`, like
torchtitan's CheckpointManager): when to save, what goes in, how it is written, and loading it back.

A checkpoint is Accelerate's `save_state` (model, optimizer, scheduler, grad scaler, every process's
RNG states) plus `best.safetensors` (the weights kept so far, which the final test needs), with
`train.ema_decay` `average.safetensors` (the moving average of the weights, mnist_sum.train.averaging), and
`meta.json` (the `LoopState`), written last, holding the loop position and the SHA-256 of every other
file. Everything is written into `.tmp_step_NNNNNN/` and renamed when complete, so a folder named
`step_*` with a `meta.json` whose hashes match is a whole checkpoint, whatever happened during the save.
Hashes are checked when a checkpoint is loaded (and computed when it is written); pruning reads only the
`meta.json` files, not the checkpoints themselves, so it costs the same at any model size.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from mnist_sum.config import CheckpointConfig
from mnist_sum.errors import DamagedCheckpoint, Diverged, UsageError
from mnist_sum.model.layers import sum_running_stats
from mnist_sum.train.averaging import WeightAverage
from mnist_sum.train.clock import RunClock
from mnist_sum.train.state import LoopState
from mnist_sum.train.window import TrainLog

BEST = "best.safetensors"
AVERAGE = "average.safetensors"
_NAME = re.compile(r"^step_(\d+)$")


class CheckpointPolicy:
    """When the loop checkpoints: whenever a stop was asked for; every `every_steps` steps inside an epoch;
    at the end of each epoch (after validation) with `every_epoch`; and after the last epoch always, so a
    crash during the test resumes straight into it."""

    def __init__(self, cfg: CheckpointConfig, epochs: int, steps_per_epoch: int) -> None:
        self.cfg, self.epochs, self.steps_per_epoch = cfg, epochs, steps_per_epoch

    def after_step(self, state: LoopState, stop_requested: bool) -> bool:
        # The epoch's last step is left to the epoch-end checkpoint, which holds its validation too.
        periodic = bool(self.cfg.every_steps) and state.step % self.cfg.every_steps == 0
        return stop_requested or (periodic and state.batches_done < self.steps_per_epoch)

    def after_epoch(self, state: LoopState) -> bool:
        """`state.epoch` is the number of epochs done."""
        return self.cfg.every_epoch or state.epoch == self.epochs


class Checkpointer:
    """Every checkpoint of one run. The loop calls `after_step` once per step and `after_epoch` once per epoch;
    each decides (`CheckpointPolicy`) and, when due, saves:
    - what: the loop state (with the metrics file's line count and the training time), the best-val weights,
      Accelerate's `save_state`; the partial train metrics window is logged first, so the log of a resumed run
      has no gap; weights that became NaN or infinite are refused (`Diverged`);
    - how: an atomic step_N folder with hashes, pruned to `keep_last`, and optionally a W&B artifact.
    `load` restores a checkpoint into the prepared objects and returns its best-val weights."""

    def __init__(self, cfg: CheckpointConfig, policy: CheckpointPolicy, accelerator: Accelerator, run_dir: Path,
                 network: torch.nn.Module, average: WeightAverage | None, train_log: TrainLog, clock: RunClock) -> None:
        self.cfg, self.policy, self.accelerator, self.run_dir = cfg, policy, accelerator, run_dir
        self.network, self.average, self.train_log, self.clock = network, average, train_log, clock
        self.tracker = train_log.tracker

    def after_step(self, state: LoopState, best_weights: dict[str, torch.Tensor], stop_requested: bool) -> Path | None:
        return self.save(state, best_weights) if self.policy.after_step(state, stop_requested) else None

    def after_epoch(self, state: LoopState, best_weights: dict[str, torch.Tensor]) -> Path | None:
        return self.save(state, best_weights) if self.policy.after_epoch(state) else None

    def save(self, state: LoopState, best_weights: dict[str, torch.Tensor]) -> Path:
        """Checkpoint the exact loop position (mid-epoch, or after an epoch's validation)."""
        self.train_log.flush_pending(state)
        sum_running_stats(self.network)
        weights = self.network.state_dict().values()
        if not all(torch.isfinite(t).all() for t in weights if t.is_floating_point()):
            raise Diverged(f"the weights became NaN or infinite by step {state.step}; no checkpoint holds them", state.step)
        state.metrics_lines, state.train_time_s = self.tracker.lines, self.clock.train_time()
        files = {BEST: best_weights} | ({AVERAGE: self.average.state_dict()} if self.average else {})
        folder = save_checkpoint(self.accelerator, self.run_dir, state, files, self.cfg.keep_last)
        if self.cfg.wandb_artifacts:
            self.tracker.log_checkpoint(folder, state.step)
        return folder

    def load(self, checkpoint: Path, step: int) -> dict[str, torch.Tensor]:
        """Model, optimizer, schedule, grad scaler, this process's RNG and the weights' average from `checkpoint`
        (verified when the run folder was opened; written at `step`); returns the weights kept so far."""
        self.accelerator.load_state(str(checkpoint))
        if self.average:
            if not (checkpoint / AVERAGE).is_file():
                raise UsageError(f"checkpoint {checkpoint} holds no average of the weights, which train.ema_decay "
                                 f"= {self.average.decay} needs", "resume it with train.ema_decay=0")
            self.average.load(load_file(str(checkpoint / AVERAGE)), step)  # copied onto the device
        return load_best(checkpoint)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: LoopState,
                    weights: dict[str, dict[str, torch.Tensor]], keep_last: int) -> Path:
    """Write step_NNNNNN/ atomically (every process takes part), with each of `weights` (file name -> tensors)
    as a safetensors file, then prune to `keep_last`."""
    final = run_dir / f"step_{state.step:06d}"
    tmp = run_dir / f".tmp_step_{state.step:06d}"
    if final.exists():  # e.g. a stop requested right after resuming: that state is already on disk
        return final
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model and optimizer from the main process; each process's RNG
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, tensors in weights.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
        state.write(tmp, {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()})
        tmp.rename(final)
        prune(run_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def _numbered(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def check_checkpoint(path: Path) -> LoopState:
    """The loop state of a whole checkpoint, or DamagedCheckpoint saying what is wrong with it."""
    state, files = LoopState.read(path)
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise DamagedCheckpoint(path, f"{name} is missing")
        if _sha256(file) != digest:
            raise DamagedCheckpoint(path, f"{name} is damaged (checksum mismatch)")
    return state


def _is_finished(path: Path) -> bool:
    """A checkpoint whose save finished: its meta.json, written last, reads. Its files are not re-hashed here:
    they were hashed as they were written, and are checked again when the checkpoint is loaded."""
    try:
        LoopState.read(path)
        return True
    except DamagedCheckpoint:
        return False


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` finished checkpoints (at least one); delete older finished ones, and
    unfinished ones older than the newest finished one (nothing can resume from them)."""
    numbered = _numbered(run_dir)
    whole = [p for _, p in numbered if _is_finished(p)]
    if not whole:
        return
    keep = set(whole[-max(1, keep_last):])
    newest = numbered[[p for _, p in numbered].index(whole[-1])][0]
    for number, path in numbered:
        if path not in keep and (path in whole or number < newest):
            shutil.rmtree(path, ignore_errors=True)


def find_latest(run_dir: Path) -> tuple[Path, LoopState] | None:
    """The newest whole checkpoint in `run_dir` and its state; damaged ones are skipped with a warning naming them."""
    if not run_dir.is_dir():
        return None
    for _, path in reversed(_numbered(run_dir)):
        try:
            return path, check_checkpoint(path)
        except DamagedCheckpoint as err:
            print(f"mnist-sum: warning: skipping damaged checkpoint {path}: {err.reason}", file=sys.stderr)
    return None


def open_checkpoint(path: Path) -> LoopState:
    """The state of the checkpoint at `path` (for --resume PATH); a damaged one is an error."""
    if not path.is_dir():
        raise UsageError(f"checkpoint {str(path)!r} not found", "pass a step_NNNNNN folder of a run, or --resume auto")
    return check_checkpoint(path)


def load_best(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / BEST))
