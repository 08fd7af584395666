"""How well trained nets read digits that are not clean MNIST: corrupted MNIST digits and digits from elsewhere.

    python bench/robustness.py runs/default-seed0 runs/quick-seed0            # the report part, side by side
    python bench/robustness.py RUN --part select                              # the part recipes are chosen on
    python bench/robustness.py RUN --show sheet.png                           # also: a sheet of examples

Every image goes through what `mnist-sum-predict` does (`mnist_sum.data.framing.mnist_views`, then the net in fp32),
and the table gives, per set, the share of digits read right. The corruptions (bench/corruptions.py) are
made from MNIST images: the `report` part from the first --count test images, the `select` part from the
run's val images (held out of training), with other draws. The outside sets (bench/outside_digits.py) have
two parts of their own. Choose recipes and preprocessing on `select`; quote `report` (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's framing, not an installed one's
from corruptions import CORRUPTIONS, boxed, corrupt, marker, photos, underlined  # noqa: E402
from outside_digits import SETS  # noqa: E402

from mnist_sum.config import load_config  # noqa: E402
from mnist_sum.data.dataset import load_splits  # noqa: E402
from mnist_sum.data.framing import mnist_views  # noqa: E402
from mnist_sum.errors import UsageError  # noqa: E402
from mnist_sum.inference.predict import read_surest  # noqa: E402
from mnist_sum.inference.saved import open_saved  # noqa: E402


def mnist_images(part: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test images (report) or val images of the default split (select)."""
    images, labels = load_splits(load_config(None))["test" if part == "report" else "val"]
    return images[:count].numpy(), labels[:count].numpy()


def framed_sets(part: str, count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Set name -> (uint8 [N, 28, 28] as predict frames them, labels)."""
    images, labels = mnist_images(part, count)
    seed = 1 if part == "report" else 2
    sets = {"clean": ([Image.fromarray(x) for x in images], labels)}
    for kind in CORRUPTIONS:
        sets[kind] = ([Image.fromarray(x) for x in corrupt(images, kind, seed)], labels)
    sets["boxed"] = (boxed(images, seed), labels)
    sets["underlined"] = (underlined(images, seed), labels)
    sets["marker"] = (marker(images, seed), labels)
    sets["photos"] = (photos(images, seed), labels)
    for name, make in SETS.items():
        sets[name] = make(part)
    return {name: framed(ims, np.asarray(lab)) for name, (ims, lab) in sets.items()}


def framed(images: list[Image.Image], labels: np.ndarray) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """The frames predict makes, one list of views per image; an image predict refuses gets a black frame and the
    label -1 (counts as wrong)."""
    views, labels = [], labels.copy()
    for i, image in enumerate(images):
        try:
            views.append(mnist_views(image))
        except UsageError:
            views.append([np.zeros((28, 28), np.uint8)])
            labels[i] = -1
    return views, labels


def digit_accuracy(target: str, sets: dict[str, tuple[list[list[np.ndarray]], np.ndarray]]) -> dict[str, float]:
    model = open_saved(target).model
    accuracy = {}
    with torch.no_grad():
        for name, (views, labels) in sets.items():
            digit_logits, _ = read_surest(model, views, 0)  # the digit head does not see the number
            accuracy[name] = float((digit_logits.argmax(-1).numpy() == labels).mean())
    return accuracy


def table(runs: list[str], results: list[dict[str, float]], sets: dict) -> str:
    width = max(12, *(len(Path(r).name) for r in runs))
    lines = [f"{'set':<16} {'images':>6}  " + "  ".join(f"{Path(r).name:>{width}}" for r in runs)]
    for name in sets:
        lines.append(f"{name:<16} {len(sets[name][1]):>6}  " + "  ".join(f"{r[name]:>{width}.1%}" for r in results))
        if name == list(CORRUPTIONS)[-1]:
            means = [np.mean([r[k] for k in CORRUPTIONS]) for r in results]
            lines.append(f"{'corruptions mean':<16} {'':>6}  " + "  ".join(f"{m:>{width}.1%}" for m in means))
    return "\n".join(lines)


def show(sets: dict, path: str) -> None:
    """Eight framed examples of each set, one row per set, as the net sees them."""
    rows = [np.concatenate([image_views[0] for image_views in views[:8]], axis=1) for views, _ in sets.values()]
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, model.safetensors files or step_* checkpoints")
    parser.add_argument("--part", choices=["report", "select"], default="report")
    parser.add_argument("--count", type=int, default=1000, help="MNIST images per corruption")
    parser.add_argument("--show", metavar="PNG", help="write a sheet of framed examples")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sets = framed_sets(args.part, args.count)
    if args.show:
        show(sets, args.show)
    results = [digit_accuracy(run, sets) for run in args.runs]
    print(f"digits read right, {args.part} part (bench/robustness.py)")
    print(table(args.runs, results, sets))


if __name__ == "__main__":
    main()
