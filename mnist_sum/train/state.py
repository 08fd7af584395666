"""The loop's position and what a run carries across a resume: one object, saved as a checkpoint's meta.json.

Like torchtitan's train state: the checkpoint holds the model, optimizer, schedule and RNGs (Accelerate's
`save_state`) plus this small readable record of where the loop was. `meta.json` is this object's fields
and the SHA-256 of every other file of the checkpoint, written last, so it also marks the folder whole.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_sum.errors import DamagedCheckpoint
from mnist_sum.files import write_json

META = "meta.json"


@dataclass
class LoopState:
    config: dict[str, Any]
    """The resolved config of the run; a resume must train the same recipe."""
    config_name: str
    """The config file the run started from (its name goes into results.json)."""
    world_size: int
    """Processes training when the state was saved."""
    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """The epoch in progress (0-based); after the last epoch, the number of epochs."""
    batches_done: int = 0
    """Batches of `epoch` already trained on; a resume skips them."""
    best_val: dict[str, Any] = field(default_factory=dict)
    """Val metrics of the epoch whose weights are kept so far (mnist_sum.train.selection), with its epoch and step."""
    kept_wrong: list[int] = field(default_factory=list)
    """The val samples (by index) the kept weights get wrong on either head: what a later epoch is compared with."""
    train_time_s: float = 0.0
    """Seconds spent training and validating, over every session of the run."""
    wandb_run_id: str | None = None
    """The W&B run this run logs to, continued on resume."""
    metrics_lines: int = 0
    """Lines of metrics.jsonl when the state was saved; a resume cuts later ones (it logs them again)."""
    flops_per_sample: float = 0.0
    """FLOPs of the model's forward and backward per training sample, counted on the run's first step."""
    skipped_steps: int = 0
    """Optimizer steps the fp16 grad scaler skipped (inf/NaN gradients), over every session of the run."""

    def write(self, folder: Path, files: dict[str, str]) -> None:
        """Write `folder/meta.json`: these fields and `files` (name -> SHA-256 of each other file)."""
        write_json(folder / META, {**dataclasses.asdict(self), "files": files})

    @classmethod
    def read(cls, folder: Path) -> tuple[LoopState, dict[str, str]]:
        """(state, SHA-256 by file name) from `folder/meta.json`; DamagedCheckpoint if it is missing or unreadable."""
        try:
            meta = json.loads((folder / META).read_text())
            files = meta.pop("files")
            state = cls(**meta)
        except FileNotFoundError:
            raise DamagedCheckpoint(folder, f"{META} is missing") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise DamagedCheckpoint(folder, f"{META} is unreadable") from None
        if not isinstance(files, dict):
            raise DamagedCheckpoint(folder, f"{META} is unreadable")
        return state, files
