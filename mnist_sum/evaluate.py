"""Scoring: per-sample predictions gathered over processes, and the metrics computed from them.

Every metric is computed from gathered per-sample rows, so each sample counts exactly once however
many processes there are (`gather_for_metrics` drops the padding Accelerate adds to the last batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from mnist_sum.model import NUM_DIGITS, SumNet, sum_loss


@torch.no_grad()
def predict(model: SumNet, loader: DataLoader, accelerator: Accelerator, exhaustive: bool = False) -> dict[str, torch.Tensor]:
    """Per-sample rows over the whole split: index, label, number, predicted digit and sum, losses.

    With `exhaustive`, also `exhaustive_correct`: for how many of the numbers 0..9 the predicted sum of
    (image, number) is right. The trunk runs once per image; only the small sum head runs ten times.
    """
    was_training = model.training
    model.eval()
    columns: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        with accelerator.autocast():
            digit_logits = model.digit_logits(batch["image"])
            sum_logits = model.sum_logits(digit_logits, batch["number"])
        _, digit_ce, sum_ce = sum_loss(digit_logits, sum_logits, batch["label"], batch["number"], reduction="none")
        rows = {
            "index": batch["index"].to(digit_logits.device),
            "label": batch["label"],
            "number": batch["number"],
            "pred_digit": digit_logits.argmax(-1),
            "pred_sum": sum_logits.argmax(-1),
            "digit_loss": digit_ce,
            "sum_loss": sum_ce,
        }
        if exhaustive:
            correct = torch.zeros_like(batch["label"])
            for n in range(NUM_DIGITS):
                numbers = torch.full_like(batch["number"], n)
                with accelerator.autocast():
                    pred = model.sum_logits(digit_logits, numbers).argmax(-1)
                correct += (pred == batch["label"] + n).long()
            rows["exhaustive_correct"] = correct
        for key, value in accelerator.gather_for_metrics(rows).items():
            columns.setdefault(key, []).append(value.cpu())
    model.train(was_training)
    return {key: torch.cat(parts) for key, parts in columns.items()}


def metrics(rows: dict[str, torch.Tensor]) -> dict[str, float | int]:
    """Accuracies (fractions in [0, 1]) and mean losses over the gathered rows."""
    digit_ok = rows["pred_digit"] == rows["label"]
    sum_ok = rows["pred_sum"] == rows["label"] + rows["number"]
    out: dict[str, float | int] = {
        "num_samples": int(len(digit_ok)),
        "digit_acc": digit_ok.double().mean().item(),
        "sum_acc": sum_ok.double().mean().item(),
        "joint_acc": (digit_ok & sum_ok).double().mean().item(),
        # Does the net really add? Sum accuracy where the digit was read right.
        "sum_acc_given_digit": sum_ok[digit_ok].double().mean().item() if digit_ok.any() else 0.0,
        "digit_loss": rows["digit_loss"].mean().item(),
        "sum_loss": rows["sum_loss"].mean().item(),
    }
    out["loss"] = (out["digit_loss"] + out["sum_loss"]) / 2
    if "exhaustive_correct" in rows:
        out["num_exhaustive_pairs"] = int(len(digit_ok)) * NUM_DIGITS
        out["exhaustive_sum_acc"] = rows["exhaustive_correct"].sum().item() / out["num_exhaustive_pairs"]
    return out



# ---------------------------------------------------------------------------------------------
# The evaluate command: score saved weights on the test split (or the val split)


def evaluate_weights(target: str, batch_size: int | None = None, mixed_precision: str | None = None,
                     split: str = "test") -> dict:
    """Metrics (fixed pairs and exhaustive) of saved weights on `split`, with the data and pairs of their run, in
    the run's mixed precision (from its results.json) unless `mixed_precision` says otherwise."""
    from mnist_sum.config import load_config
    from mnist_sum.data import load_splits, make_datasets, make_loader
    from mnist_sum.outputs import load_weights, resolve_weights

    weights, run_dir = resolve_weights(target)
    model = load_weights(weights)
    # The run's own config decides the data source and the (image, number) pairs; bare weights use the defaults.
    cfg = load_config(run_dir / "config.yaml" if run_dir else None)
    if mixed_precision is None and run_dir and (run_dir / "results.json").is_file():
        mixed_precision = json.loads((run_dir / "results.json").read_text()).get("mixed_precision")
    accelerator = Accelerator(mixed_precision=mixed_precision)
    _, val_set, test_set = make_datasets(cfg, load_splits(cfg))
    dataset = val_set if split == "val" else test_set
    loader = accelerator.prepare(make_loader(dataset, batch_size or cfg.train.eval_batch_size, 0, False, 0))
    model = model.to(accelerator.device)
    result = metrics(predict(model, loader, accelerator, exhaustive=True))
    return {"weights": str(weights), "mixed_precision": accelerator.mixed_precision, "split": split, split: result}


def _table(report: dict) -> str:
    t = report[report["split"]]
    n, pairs, digit_right = t["num_samples"], t["num_exhaustive_pairs"], round(t["digit_acc"] * t["num_samples"])
    rows = [
        ("digit", t["digit_acc"], n),
        ("sum", t["sum_acc"], n),
        ("both", t["joint_acc"], n),
        ("sum, where the digit is right", t["sum_acc_given_digit"], digit_right),
        ("sum, every image with every number", t["exhaustive_sum_acc"], pairs),
    ]
    precision = "fp32" if report["mixed_precision"] == "no" else report["mixed_precision"]
    what = "test images" if report["split"] == "test" else "val images (held out of the training set)"
    lines = [f"{report['weights']} on the {n:,} MNIST {what} ({precision})",
             f"  {'accuracy':<36} {'':>8}  {'right / total':>17}"]
    lines += [f"  {name:<36} {acc:8.2%}  {round(acc * total):>8,} / {total:,}" for name, acc, total in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mnist_sum.cli import ArgumentParser, run_cli
    from mnist_sum.files import write_json

    parser = ArgumentParser(prog="mnist-sum-evaluate",
                            description="Score saved weights on the MNIST test split: the run's fixed "
                            "(image, number) pairs and every image with every number 0..9.")
    parser.add_argument("target", metavar="RUN_OR_WEIGHTS", help="a run folder or a model.safetensors file")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="val: the run's held-out val images, on which it selected its weights")
    parser.add_argument("--out", help="JSON file to write (default: evaluation.json beside the weights)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's train.eval_batch_size)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"],
                        help="default: the run's own (from its results.json), else no")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)

    def run() -> None:
        report = evaluate_weights(args.target, args.batch_size, args.mixed_precision, args.split)
        out = Path(args.out) if args.out else Path(report["weights"]).with_name("evaluation.json")
        write_json(out, report)
        print(_table(report))
        print(f"written: {out}")

    return run_cli(run, args.debug)


if __name__ == "__main__":
    import sys

    sys.exit(main())
