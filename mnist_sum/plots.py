"""PNG plots written into the run folder at the end of training, from metrics.jsonl and the test predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from mnist_sum.files import atomic_write
from mnist_sum.scoring import Predictions


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _series(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(x["step"], x[key]) for x in lines if key in x]
    return [p[0] for p in points], [p[1] for p in points]


def write_plots(run_dir: Path, test_preds: Predictions) -> list[Path]:
    """loss.png (train vs val), accuracy.png (digit and sum, train vs val), confusion_digit.png (test)."""
    # Here, not at the top: matplotlib is 0.8 s of imports that only this end of a run needs. A bare Figure
    # (not pyplot) draws to files without a display or pyplot's global state.
    from matplotlib.figure import Figure

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    written = []

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label, style in (("train/loss", "train", "-"), ("val/loss", "val", "o-")):
        ax.plot(*_series(lines, key), style, label=label)
    ax.set(xlabel="step", ylabel="loss (mean of the two cross-entropies)", yscale="log", title="loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, run_dir / "loss.png")
    written.append(run_dir / "loss.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label, style in (("train/digit_acc", "train digit", "-"), ("train/sum_acc", "train sum", "-"),
                              ("val/digit_acc", "val digit", "o-"), ("val/sum_acc", "val sum", "s-")):
        steps, values = _series(lines, key)
        ax.plot(steps, [100 * (1 - v) for v in values], style, label=label)
    ax.set(xlabel="step", ylabel="error (%)", yscale="log", title="error rate (100% - accuracy)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    _save(fig, run_dir / "accuracy.png")
    written.append(run_dir / "accuracy.png")

    matrix = torch.zeros(10, 10, dtype=torch.long)
    matrix.index_put_((test_preds["label"], test_preds["pred_digit"]), torch.ones_like(test_preds["label"]),
                      accumulate=True)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    errors = matrix.clone().fill_diagonal_(0)  # colour the mistakes: the diagonal would drown them
    ax.imshow(errors.numpy(), cmap="Reds", vmin=0, vmax=max(1, int(errors.max())))
    for (i, j), count in zip(torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(), matrix.flatten().tolist()):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, fontweight="bold" if i == j else "normal")
    ax.set(xlabel="predicted digit", ylabel="true digit", xticks=range(10), yticks=range(10),
           title=f"test digits: {int(matrix.trace())}/{int(matrix.sum())} right")
    _save(fig, run_dir / "confusion_digit.png")
    written.append(run_dir / "confusion_digit.png")
    return written
