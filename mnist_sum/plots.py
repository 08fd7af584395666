"""PNG plots written into the run folder at the end of training, from metrics.jsonl and the test predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and none is opened
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnist_sum.files import atomic_write  # noqa: E402
from mnist_sum.scoring import Predictions  # noqa: E402


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _series(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(x["step"], x[key]) for x in lines if key in x]
    return [p[0] for p in points], [p[1] for p in points]


def write_plots(run_dir: Path, test_preds: Predictions) -> list[Path]:
    """loss.png (train vs val), accuracy.png (digit and sum, train vs val), confusion_digit.png (test)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("train/loss", "train", "-"), ("val/loss", "val", "o-")):
        ax.plot(*_series(lines, key), style, label=label)
    ax.set(xlabel="step", ylabel="loss (mean of the two cross-entropies)", yscale="log", title="loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, run_dir / "loss.png")
    written.append(run_dir / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
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
    fig, ax = plt.subplots(figsize=(5.5, 5))
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
