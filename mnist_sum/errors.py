"""Why a run ended early, as types that say what happened, each printed as one line with an exit code.

Every `ProjectError` prints as `mnist-sum: error: <what> (<how to fix>)` and ends the command with its
`exit_code` (2 unless it says otherwise); `--debug` shows the traceback instead. `Stopped` is not an
error: a stop that was asked for (SIGTERM, Ctrl-C) and saved a checkpoint to resume from.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mnist_sum.launcher import max_restarts, restart_count


class ProjectError(Exception):
    """A failure the project can name, with what to do about it."""

    exit_code = 2

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what, fix)  # args as the constructor takes them: the error pickles between ranks
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return self.line()

    def line(self) -> str:
        fix = f" ({self.fix})" if self.fix else ""
        return f"mnist-sum: error: {self.what}{fix}"


class UsageError(ProjectError):
    """A mistake in the input that a person can fix: a config value, a path, an image, a launch flag."""


class Diverged(ProjectError):
    """The loss or the weights became NaN or infinite; no checkpoint holds weights from that step on."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"training diverged: {what}",
                         "lower optim.lr or set optim.grad_clip=1.0, then resume from an earlier checkpoint or restart")
        self.args = (what, step)
        self.step = step


class DamagedCheckpoint(ProjectError):
    """A checkpoint folder that is not whole: a file missing or changed, or its meta.json unreadable."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"checkpoint {path} is damaged: {reason}",
                         "resume from an older step_* folder, or use --resume auto to pick the newest whole one")
        self.args = (path, reason)
        self.path, self.reason = Path(path), reason


class LaunchError(ProjectError):
    """The processes that started do not form the group the launch asked for."""


class LostPeer(ProjectError):
    """A collective failed because another process died, hung past the timeout or lost its link."""

    exit_code = 1

    def __init__(self, rank: int | str, cause: str) -> None:
        super().__init__(f"process {rank} lost contact with the other processes: {cause}",
                         "see the other processes' output for the cause; " + _how_to_continue())
        self.args = (rank, cause)


def _how_to_continue() -> str:
    if restart_count() < max_restarts():  # accelerate launch --max_restarts N
        return f"the launcher restarts the workers from the newest checkpoint (restart {restart_count() + 1})"
    return "continue with --resume auto"


class Stopped(Exception):
    """The run was asked to stop (SIGTERM/SIGINT) and saved a checkpoint to resume from."""

    def __init__(self, step: int, checkpoint: Path, run_dir: Path, signum: int = signal.SIGTERM) -> None:
        super().__init__(step, checkpoint, run_dir, signum)
        self.step, self.checkpoint, self.run_dir, self.signum = step, Path(checkpoint), Path(run_dir), signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by signal N"

    def line(self) -> str:
        return (f"mnist-sum: stopped at step {self.step}, checkpoint {self.checkpoint.name} saved; continue with "
                f"--resume auto run.dir={self.run_dir}")

    def __str__(self) -> str:
        return self.line()
