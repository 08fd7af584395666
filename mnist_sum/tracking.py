"""Where metrics go: a JSONL file in the run folder (always) and Accelerate's trackers.

Only the main process writes; on other processes `Tracker` is a no-op, so the training loop never
asks which process it is on before logging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator


class Tracker:
    def __init__(self, accelerator: Accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        path = run_dir / "metrics.jsonl"
        # Appending: a resumed run continues the file (cut back to the checkpoint's line count beforehand).
        self.lines = len(path.read_text().splitlines()) if self.enabled and path.exists() else 0
        self._file = open(path, "a") if self.enabled else None  # noqa: SIM115 (closed in close())

    def log(self, values: dict[str, Any], step: int) -> None:
        """One JSON line per call: {"step": N, key: value, ...}; flushed so a crash keeps every line written."""
        if self._file is None:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
