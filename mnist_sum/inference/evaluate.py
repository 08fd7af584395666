"""Score saved weights on the test split (or the val split) with the data and (image, number) pairs of their run."""

from __future__ import annotations

from typing import Any

from mnist_sum.config import load_config
from mnist_sum.data.batches import EvalBatches
from mnist_sum.data.dataset import load_splits, make_datasets
from mnist_sum.distributed.accelerator import make_accelerator
from mnist_sum.inference.saved import open_saved
from mnist_sum.model.scoring import gather_predictions, metrics
from mnist_sum.train.results import read_results


def evaluate_weights(target: str, batch_size: int | None = None, mixed_precision: str | None = None,
                     split: str = "test", test_shifts: int | None = None) -> dict[str, Any]:
    """Metrics (fixed pairs and exhaustive) of saved weights on `split`, with the data and pairs of their run, in
    the run's mixed precision (from its results.json) unless `mixed_precision` says otherwise, each image read
    in the views of the run's `model.test_shifts` unless `test_shifts` says otherwise."""
    saved = open_saved(target)
    model, run_dir = saved.model, saved.run_dir
    # The run's own config decides the data source and the (image, number) pairs; bare weights use the defaults.
    cfg = load_config(run_dir / "config.yaml" if run_dir else None, saved=run_dir is not None)
    if mixed_precision is None and run_dir and (run_dir / "results.json").is_file():
        mixed_precision = read_results(run_dir).get("mixed_precision")
    accelerator = make_accelerator(mixed_precision=mixed_precision)
    _, val_set, test_set = make_datasets(cfg, load_splits(cfg))
    dataset = (val_set if split == "val" else test_set).to(accelerator.device)
    batches = EvalBatches(dataset, batch_size or cfg.train.eval_batch_size, accelerator.process_index,
                          accelerator.num_processes)
    model = model.to(accelerator.device)
    shifts = model.test_shifts if test_shifts is None else test_shifts
    result = metrics(gather_predictions(model, batches, accelerator, exhaustive=True, shifts=shifts))
    return {"weights": str(saved.weights), "checkpoint": str(saved.checkpoint) if saved.checkpoint else None,
            "mixed_precision": accelerator.mixed_precision, "test_shifts": shifts, "split": split, split: result}


def report_table(report: dict[str, Any]) -> str:
    """The evaluation as a table for people: each accuracy with its right / total counts."""
    t = report[report["split"]]
    n, pairs, digit_right = t["num_samples"], t["num_exhaustive_pairs"], round(t["digit_acc"] * t["num_samples"])
    table_rows = [
        ("digit", t["digit_acc"], n),
        ("sum", t["sum_acc"], n),
        ("both", t["joint_acc"], n),
        ("sum, where the digit is right", t["sum_acc_given_digit"], digit_right),
        ("sum, every image with every number", t["exhaustive_sum_acc"], pairs),
    ]
    precision = "fp32" if report["mixed_precision"] == "no" else report["mixed_precision"]
    what = "test images" if report["split"] == "test" else "val images (held out of the training set)"
    views = (2 * report["test_shifts"] + 1) ** 2
    lines = [f"{report['weights']} on the {n:,} MNIST {what} ({precision}, {views} view{'s' * (views > 1)} each)",
             f"  {'accuracy':<36} {'':>8}  {'right / total':>17}"]
    lines += [f"  {name:<36} {acc:8.2%}  {round(acc * total):>8,} / {total:,}" for name, acc, total in table_rows]
    return "\n".join(lines)
