"""What torchrun (`accelerate launch` with several processes) tells a worker through its environment, and the
one thing a worker tells it back: why it failed."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from mnist_sum.files import write_json


def under_torchrun() -> bool:
    return "TORCHELASTIC_RESTART_COUNT" in os.environ


def restart_count() -> int:
    """How many times the elastic agent (`--max_restarts N`) has restarted this worker group: 0 on the first
    start and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def max_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS") or 0)


def launch_time() -> datetime:
    """When the job was launched. Under torchrun that is the start of the elastic agent, the workers' parent,
    which outlives every worker group it restarts: a run named by its start time keeps its folder through
    restarts. (Global rank 0, which names the run, stays on the agent of machine rank 0: Accelerate's static
    rendezvous.)"""
    if under_torchrun():
        import psutil  # here: only torchrun's workers need it, and bench/gpu_check.sh's bare image may lack it

        try:
            return datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
        except psutil.Error:
            pass  # the agent is gone or unreadable: the workers are on their own
    return datetime.now()


def tell_launcher(line: str) -> None:
    """Leave `line` where torchrun's failure report looks for a worker's error: the file
    `torch.distributed.elastic.multiprocessing.errors.record` writes for an uncaught exception, in its format.
    The report then names the line as the root cause instead of pointing to the docs on tracebacks."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        info = {"py_callstack": line, "timestamp": str(int(time.time()))}
        write_json(Path(path), {"message": {"message": line, "extraInfo": info}})
