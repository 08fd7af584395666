"""The run's one clock: when each phase of this session began, and the training time over every session."""

from __future__ import annotations

import time


class RunClock:
    """Phases of this session (`mark`) and the run's training time: the seconds earlier sessions trained and
    validated (from the checkpoint resumed) plus this session's, from the "train" mark to the "test" mark."""

    PHASES = ("setup", "train", "test", "outputs")

    def __init__(self, started: float) -> None:
        self.marks = {"setup": started}
        self.trained_before = 0.0

    def mark(self, phase: str) -> None:
        self.marks[phase] = time.perf_counter()

    def train_time(self) -> float:
        """Seconds of training and validation, over every session of the run (fixed once "test" is marked)."""
        end = self.marks.get("test", time.perf_counter())
        return self.trained_before + end - self.marks.get("train", end)

    def phases(self) -> dict[str, float]:
        """Seconds of each phase of this session so far (what a run costs besides training)."""
        now = time.perf_counter()
        starts = [self.marks[p] for p in self.PHASES if p in self.marks]
        return {p: round(end - start, 2) for p, start, end in zip(self.PHASES, starts, [*starts[1:], now])}

    def wall_time(self) -> float:
        return time.perf_counter() - self.marks["setup"]
