"""PNG plots in the run folder, drawn by a helper process: loss.png and accuracy.png from metrics.jsonl,
confusion_digit.png from the test split's confusion matrix.

Why a helper process: matplotlib's import is a noticeable part of a short run (docs/benchmarks.md: Fixed
cost). The helper imports it while the trainer sets up, on a core the single-threaded start-up leaves idle. It
draws once the test split is scored, not during the test: drawing beside torch's threads slowed both. This
module imports neither torch nor anything that does, so that the helper starts in a fraction of a second.

    python -m mnist_sum.tracking.plots     # the helper: draws the run that one JSON line on stdin names
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mnist_sum.files import atomic_write


class PlotWriter:
    """The helper process, started at once (on the main process only: `enabled`), idle until `write()` hands it
    the run's last figures. A context manager: leaving it without `write()` (an error, a stop request) ends the
    helper at once."""

    def __init__(self, enabled: bool = True) -> None:
        self._child: subprocess.Popen | None = None
        if enabled:
            # The package's folder on the path: the helper finds mnist_sum even when the project is not installed.
            paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
            self._child = subprocess.Popen(
                [sys.executable, "-m", "mnist_sum.tracking.plots"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths))))

    def write(self, run_dir: Path, confusion: list[list[int]]) -> None:
        """Draw the three plots of `run_dir` (its metrics.jsonl complete; `confusion[true][predicted]`, the test
        digits' counts) and wait for them; a failed helper raises with its last line of stderr."""
        if self._child is None:
            return
        child, self._child = self._child, None
        job = json.dumps({"run_dir": str(run_dir), "confusion": confusion})
        _, errors = child.communicate(job + "\n")  # a helper that ended early: communicate ignores the broken pipe
        if child.returncode != 0:
            last = (errors.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
            raise RuntimeError(f"the plots could not be drawn: {last}")

    def __enter__(self) -> PlotWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.communicate()
            self._child = None


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _log_y(ax) -> None:
    """A log y axis labelled in plain numbers (0.5, not 5x10^-1): shorter labels that fit the figure's margins
    without a second layout pass, and no mathtext to typeset. Minor ticks are labelled as matplotlib's default
    does: all of them when the data span less than a decade, 2 and 5 up to two decades, none beyond."""
    from matplotlib.ticker import FuncFormatter  # here, not at the top: only the helper draws

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    shown = "123456789" if high < 10 * low else "25" if high < 100 * low else ""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in shown else ""))


def _series(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(x["step"], x[key]) for x in lines if key in x]
    return [p[0] for p in points], [p[1] for p in points]


def draw_curves(run_dir: Path) -> None:
    """loss.png (train vs val) and accuracy.png (error rate of digit and sum, train vs val)."""
    from matplotlib.figure import Figure  # here, not at the top: only the helper draws (see the module's doc)

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label, style in (("train/loss", "train", "-"), ("val/loss", "val", "o-")):
        ax.plot(*_series(lines, key), style, label=label)
    ax.set(xlabel="step", ylabel="loss (mean of the two cross-entropies)", title="loss")
    _log_y(ax)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, run_dir / "loss.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label, style in (("train/digit_acc", "train digit", "-"), ("train/sum_acc", "train sum", "-"),
                              ("val/digit_acc", "val digit", "o-"), ("val/sum_acc", "val sum", "s-")):
        steps, values = _series(lines, key)
        ax.plot(steps, [100 * (1 - v) for v in values], style, label=label)
    ax.set(xlabel="step", ylabel="error (%)", title="error rate (100% - accuracy)")
    _log_y(ax)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    _save(fig, run_dir / "accuracy.png")


def draw_confusion(run_dir: Path, matrix: list[list[int]]) -> None:
    """confusion_digit.png: the test digits' counts, the mistakes coloured."""
    from matplotlib.figure import Figure  # here, not at the top: only the helper draws (see the module's doc)

    size = len(matrix)
    # Colour the mistakes only: the diagonal would drown them.
    errors = [[0 if i == j else count for j, count in enumerate(row)] for i, row in enumerate(matrix)]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.imshow(errors, cmap="Reds", vmin=0, vmax=max(1, *map(max, errors)))
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, fontweight="bold" if i == j else "normal")
    right, total = sum(matrix[i][i] for i in range(size)), sum(map(sum, matrix))
    ax.set(xlabel="predicted digit", ylabel="true digit", xticks=range(size), yticks=range(size),
           title=f"test digits: {right}/{total} right")
    _save(fig, run_dir / "confusion_digit.png")


def main() -> None:
    """The helper: import matplotlib now (the trainer is still setting up), then draw the job read from stdin;
    end of input without a job (the trainer ended early, however it ended) ends the helper."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the trainer decides
    import matplotlib.figure  # noqa: F401  (here, not at the top: the import is what the helper runs early for)

    line = sys.stdin.readline()
    if line:
        job = json.loads(line)
        draw_curves(Path(job["run_dir"]))
        draw_confusion(Path(job["run_dir"]), job["confusion"])


if __name__ == "__main__":
    main()
