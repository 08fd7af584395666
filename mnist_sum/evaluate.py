"""Scoring: per-sample predictions gathered over processes, and the metrics computed from them.

Every metric is computed from gathered per-sample rows, so each sample counts exactly once however
many processes there are (`gather_for_metrics` drops the padding Accelerate adds to the last batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from mnist_sum.model import NUM_DIGITS, SumNet


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
        digit_ce, sum_ce = _per_sample_losses(digit_logits, sum_logits, batch["label"], batch["number"])
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


def _per_sample_losses(digit_logits, sum_logits, labels, numbers) -> tuple[torch.Tensor, torch.Tensor]:
    digit = F.cross_entropy(digit_logits.float(), labels, reduction="none")
    return digit, F.cross_entropy(sum_logits.float(), labels + numbers, reduction="none")


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

