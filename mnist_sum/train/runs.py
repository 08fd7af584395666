"""The run folder: a new one, or an existing one to resume from its newest (or a named) checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mnist_sum.config import Config, flatten, with_former_defaults
from mnist_sum.errors import UsageError
from mnist_sum.files import write_text
from mnist_sum.launcher import launch_time
from mnist_sum.train.checkpoint import find_latest, open_checkpoint
from mnist_sum.train.state import LoopState

# Keys that may differ between a checkpoint and the resumed run: none of them changes the weights.
# train.micro_batches: the same function, summed in another order (like another number of processes).
RESUMABLE_CHANGES = ("run.", "checkpoint.", "wandb.", "tracking.", "train.log_every", "train.micro_batches")


def run_dir_for(cfg: Config, config_name: str) -> Path:
    name = cfg.run.name or f"{config_name}-{launch_time():%Y%m%d-%H%M%S}"
    return Path(cfg.run.dir or Path("runs") / name)


def _check_same_recipe(cfg: Config, state: LoopState, path: Path) -> None:
    now, then = flatten(cfg.to_dict()), flatten(with_former_defaults(state.config))
    changed = [k for k in sorted(now.keys() | then.keys())
               if now.get(k) != then.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        diffs = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise UsageError(f"the config differs from checkpoint {path.name}'s ({diffs})",
                         "drop those overrides to resume that run exactly, or start a new run")


def _create(run_dir: Path, fresh_ok: bool, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not fresh_ok:
        if not overwrite:
            raise UsageError(f"run folder {str(run_dir)!r} already exists and is not empty",
                             "resume it with --resume auto, choose another run.dir or run.name, or add run.overwrite=true")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"\0" * 4096)  # mkdir can succeed where writing fails (read-only mount, quota)
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to run folder {str(run_dir)!r}: {err.strerror}", "choose a writable run.dir") from None


def check_space(run_dir: Path, num_params: int, keep_last: int) -> None:
    """Refuse to start a run that would fill the disk: checkpoints (weights, two Adam moments and the best
    weights, in float32, keep_last + 1 of them during a save) plus 32 MiB for predictions, plots and W&B."""
    needed = 16 * num_params * (keep_last + 1) + 32 * 2**20
    existing = next(p for p in [run_dir.absolute(), *run_dir.absolute().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UsageError(f"only {free / 2**20:.1f} MiB free for run folder {str(run_dir)!r}, the run needs about "
                         f"{needed / 2**20:.0f} MiB", "free some space or choose another run.dir")


@dataclass
class OpenedRun:
    """A run folder ready to write, and where its loop starts."""

    dir: Path
    checkpoint: Path | None = None
    """The checkpoint to resume from; None for a fresh start."""
    state: LoopState | None = None
    """That checkpoint's loop state (read, and its files checked, once)."""


def open_run(cfg: Config, config_name: str, resume: str | None, space_for: tuple[int, int] = (0, 1)) -> OpenedRun:
    """Main process only: the run folder, ready to write, with room on its disk for a model of `space_for` =
    (parameters, checkpoints kept), and the checkpoint to resume from, if any."""
    if resume in (None, "auto"):
        run_dir = run_dir_for(cfg, config_name)
        latest = find_latest(run_dir) if resume == "auto" else None
        if latest is None:
            # --resume auto with nothing to resume starts afresh, also over a run killed before its first checkpoint.
            check_space(run_dir, *space_for)
            _create(run_dir, fresh_ok=resume == "auto", overwrite=cfg.run.overwrite)
            if resume == "auto" and (run_dir / "metrics.jsonl").exists():
                write_text(run_dir / "metrics.jsonl", "")
            return OpenedRun(run_dir.resolve())
        checkpoint, state = latest
    else:
        checkpoint = Path(resume)
        state = open_checkpoint(checkpoint)
        run_dir = checkpoint.parent
        if cfg.run.dir and Path(cfg.run.dir).resolve() != run_dir.resolve():
            raise UsageError(f"--resume {resume} belongs to run folder {str(run_dir)!r}, not run.dir={cfg.run.dir!r}",
                             "drop run.dir; a resumed run continues in its own folder")
    _check_same_recipe(cfg, state, checkpoint)
    check_space(run_dir, *space_for)
    _truncate_metrics(run_dir, state.metrics_lines)
    return OpenedRun(run_dir.resolve(), checkpoint.resolve(), state)


def _truncate_metrics(run_dir: Path, lines: int) -> None:
    """Drop the lines logged after the checkpoint was saved: the resumed run logs those steps again."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        kept = path.read_text().splitlines(keepends=True)[:lines]
        write_text(path, "".join(kept))
