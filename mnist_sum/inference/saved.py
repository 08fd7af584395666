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

from accelerate.utils import SAFE_WEIGHTS_NAME

from mnist_sum.errors import DamagedCheckpoint, UsageError
from mnist_sum.model.network import SumNet
from mnist_sum.model.weights import WEIGHTS, load_weights, resolve_weights, saved_model_config
from mnist_sum.train.checkpoint import BEST, check_checkpoint, find_latest
from mnist_sum.train.state import META


@dataclass
class Saved:
    model: SumNet
    weights: Path  # the file the weights came from
    run_dir: Path | None  # the run they belong to: its config decides the data and the (image, number) pairs
    checkpoint: Path | None = None


def open_saved(target: str | Path) -> Saved:
    """The network saved at `target` (run folder, weights file or checkpoint folder), ready for evaluation."""
    path = Path(target)
    if not path.exists():
        raise UsageError(f"{str(path)!r} not found", "pass a run folder, its model.safetensors or one of its step_* folders")
    if not (path / META).is_file():  # a run folder or a weights file, not a checkpoint
        if path.is_dir() and not (path / WEIGHTS).is_file() and (latest := find_latest(path)):
            raise UsageError(f"run {path} has not finished: it has no {WEIGHTS} yet",
                             f"score its newest checkpoint: {latest[0]}")
        weights, run_dir = resolve_weights(path)
        return Saved(load_weights(weights), weights, run_dir)
    try:
        state = check_checkpoint(path)
    except DamagedCheckpoint as err:  # its own advice is about resuming
        raise UsageError(err.what, "use another step_* folder of the run, or the run folder once it has finished") from None
    # Until the run's first validation there are no kept weights (best.safetensors is empty): the network as saved.
    weights = path / (BEST if state.best_val else SAFE_WEIGHTS_NAME)
    return Saved(load_weights(weights, saved_model_config(state.config["model"])), weights, path.parent, path)
