"""One exception type for mistakes a person can fix, printed as a single line."""

from __future__ import annotations


class UsageError(Exception):
    """A problem with the user's input: what went wrong and how to fix it."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        fix = f" ({self.fix})" if self.fix else ""
        return f"mnist-sum: error: {self.what}{fix}"


class Stopped(Exception):
    """The run was asked to stop (SIGTERM/SIGINT) and saved a checkpoint to resume from."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
