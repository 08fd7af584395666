"""What evaluate and predict read: a run folder, a weights file, or a checkpoint folder (`step_*`) of a run.

A checkpoint is the first thing a user scores mid-training. Its weights are the run's kept weights so far
(`best.safetensors`: what the run would test if it ended at that step), or, in a checkpoint written before
the first validation, the network as it stood. Its files carry no model config; the checkpoint's own
`meta.json` does (the config it was written with), and its hashes are checked first, so a damaged
checkpoint is named as such rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from mnist_sum.config import ModelConfig, with_former_defaults
from mnist_sum.errors import DamagedCheckpoint, UsageError
from mnist_sum.model.network import SumNet
from mnist_sum.model.weights import load_weights, resolve_weights
from mnist_sum.train.checkpoint import BEST, check_checkpoint
from mnist_sum.train.state import META

NETWORK = "model.safetensors"  # the name Accelerate's save_state gives the (one) prepared model's weights


@dataclass
class Saved:
    model: SumNet
    weights: Path  # the file the weights came from
    run_dir: Path | None  # the run they belong to: its config decides the data and the (image, number) pairs
    checkpoint: Path | None = None


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / META).is_file()


def open_saved(target: str | Path) -> Saved:
    """The network saved at `target` (run folder, weights file or checkpoint folder), ready for evaluation."""
    path = Path(target)
    if not path.exists():
        raise UsageError(f"{str(path)!r} not found", "pass a run folder, its model.safetensors or one of its step_* folders")
    checkpoints = sorted(path.glob("step_*")) if path.is_dir() else []
    if checkpoints and not (path / "model.safetensors").is_file():
        raise UsageError(f"run {path} has not finished: it has no model.safetensors yet",
                         f"score its newest checkpoint: {checkpoints[-1]}")
    if not is_checkpoint(path):
        weights, run_dir = resolve_weights(path)
        return Saved(load_weights(weights), weights, run_dir)
    try:
        state = check_checkpoint(path)
    except DamagedCheckpoint as err:  # its own advice is about resuming
        raise UsageError(err.what, "use another step_* folder of the run, or the run folder once it has finished") from None
    with safe_open(str(path / BEST), framework="pt") as f:
        validated = bool(list(f.keys()))  # empty until the run's first validation
    weights = path / (BEST if validated else NETWORK)
    cfg = ModelConfig(**with_former_defaults({"model": state.config["model"]})["model"])
    return Saved(load_weights(weights, cfg), weights, path.parent, path)
