"""Time-to-accuracy plot: val error against training seconds, one line per run, one colour per recipe.

    python bench/time_to_accuracy.py runs/quick-fp32-seed* runs/default-seed* --out docs/time_to_accuracy.png

Each point is one validation (the end of an epoch): x is the training time so far (`train/elapsed_s`,
validation included), y the val error of the worse of the two heads. Runs are grouped by the config they
ran (`results.json`: `config`). Also prints, per recipe, the mean time to 99% on val and the final val error.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the file-only backend)


def curve(run_dir: Path) -> tuple[str, list[float], list[float]]:
    """(recipe, training seconds at each validation, val error of the worse head there in %)."""
    recipe = json.loads((run_dir / "results.json").read_text())["config"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    vals = [x for x in lines if "val/digit_acc" in x]
    return (recipe, [x["train/elapsed_s"] for x in vals],
            [100 * (1 - min(x["val/digit_acc"], x["val/sum_acc"])) for x in vals])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/time_to_accuracy.png"))
    parser.add_argument("--title", default="val error vs training time")
    args = parser.parse_args()

    curves = [curve(r) for r in args.runs]
    recipes = list(dict.fromkeys(recipe for recipe, _, _ in curves))
    colours = dict(zip(recipes, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe in recipes:
        mine = [(s, e) for r, s, e in curves if r == recipe]
        for i, (seconds, errors) in enumerate(mine):
            ax.plot(seconds, errors, marker="o", markersize=3, color=colours[recipe], alpha=0.7,
                    label=f"{recipe} ({len(mine)} seeds)" if i == 0 else None)
        to_99 = [next((s for s, e in zip(sec, err) if e <= 1.0), None) for sec, err in mine]
        reached = [t for t in to_99 if t is not None]
        print(f"{recipe}: {len(mine)} runs, reached 99% on val in {len(reached)}, mean time to 99% "
              f"{statistics.mean(reached):.0f} s" if reached else f"{recipe}: {len(mine)} runs, none reached 99% on val",
              f"| final val error {statistics.mean(err[-1] for _, err in mine):.2f}%")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="99% accuracy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers on the log axes, not powers of ten
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([0.3, 0.5, 1, 2, 5])
    ax.set_xticks([5, 10, 20, 50, 100, 200, 500])
    ax.set_xlabel("training seconds (validation included)")
    ax.set_ylabel("val error, worse head (%)")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
