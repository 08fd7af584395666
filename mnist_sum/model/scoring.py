"""Scoring: per-sample predictions gathered over processes, and the metrics computed from them.

Every metric is computed from gathered per-sample predictions, so each sample counts exactly once however
many processes there are: each scores its own part of the split (`batches.EvalBatches`), and the gather cuts
the padding that makes the parts the same length for the collective.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from mnist_sum.data.batches import EvalBatches
from mnist_sum.model.network import NUM_DIGITS, SumNet, sum_loss

Predictions = dict[str, torch.Tensor]
"""Per-sample columns of one split: index, label, number, pred_digit, pred_sum, digit_loss, sum_loss
(and exhaustive_correct); row i of every column is the same sample."""


def hits(labels: torch.Tensor, numbers: torch.Tensor, pred_digit: torch.Tensor,
         pred_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(digit right, sum right), one boolean per sample."""
    return pred_digit == labels, pred_sum == labels + numbers


@torch.no_grad()
def gather_predictions(model: SumNet, batches: EvalBatches, accelerator: Accelerator,
                       exhaustive: bool = False, shifts: int | None = None) -> Predictions:
    """The predictions of `model` on every sample of the split, gathered from all processes, in index order.

    With `exhaustive`, also `exhaustive_correct`: for how many of the numbers 0..9 the predicted sum of
    (image, number) is right. The trunk runs once per image; only the small sum head runs ten times.
    `shifts`: the views each image is read in (SumNet.digit_logits; default the model's `test_shifts`).
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        with accelerator.autocast():
            digit_logits = model.digit_logits(batch["image"], shifts=shifts)
            sum_logits = model.sum_logits(digit_logits, batch["number"])
        _, digit_ce, sum_ce = sum_loss(digit_logits, sum_logits, batch["label"], batch["number"], reduction="none")
        columns = {
            "index": batch["index"],
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
            columns["exhaustive_correct"] = correct
        for key, value in columns.items():
            parts.setdefault(key, []).append(value)
    model.train(was_training)
    return {key: gather_parts(torch.cat(chunks), batches.sizes, accelerator).cpu() for key, chunks in parts.items()}


def gather_parts(part: torch.Tensor, sizes: list[int], accelerator: Accelerator) -> torch.Tensor:
    """Every process's `part` (of length sizes[rank]), concatenated in rank order. The collective needs tensors of
    one length, so each is padded to the longest and the padding cut again."""
    if accelerator.num_processes == 1:
        return part
    longest = max(sizes)
    padded = torch.cat([part, part.new_zeros(longest - len(part), *part.shape[1:])])
    gathered = accelerator.gather(padded).view(len(sizes), longest, *part.shape[1:])
    return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])


def metrics(preds: Predictions) -> dict[str, float | int]:
    """Accuracies (fractions in [0, 1]) and mean losses over the gathered predictions."""
    digit_ok, sum_ok = hits(preds["label"], preds["number"], preds["pred_digit"], preds["pred_sum"])
    out: dict[str, float | int] = {
        "num_samples": int(len(digit_ok)),
        "digit_acc": digit_ok.double().mean().item(),
        "sum_acc": sum_ok.double().mean().item(),
        "joint_acc": (digit_ok & sum_ok).double().mean().item(),
        # Does the net really add? Sum accuracy where the digit was read right.
        "sum_acc_given_digit": sum_ok[digit_ok].double().mean().item() if digit_ok.any() else 0.0,
        "digit_loss": preds["digit_loss"].mean().item(),
        "sum_loss": preds["sum_loss"].mean().item(),
    }
    out["loss"] = (out["digit_loss"] + out["sum_loss"]) / 2
    if "exhaustive_correct" in preds:
        out["num_exhaustive_pairs"] = int(len(digit_ok)) * NUM_DIGITS
        out["exhaustive_sum_acc"] = preds["exhaustive_correct"].sum().item() / out["num_exhaustive_pairs"]
    return out


def wrong_samples(preds: Predictions) -> list[int]:
    """The indices of the samples wrong on either head, in order."""
    digit_ok, sum_ok = hits(preds["label"], preds["number"], preds["pred_digit"], preds["pred_sum"])
    return preds["index"][~(digit_ok & sum_ok)].tolist()


def digit_confusion(preds: Predictions) -> list[list[int]]:
    """`[true digit][predicted digit]` counts over the gathered predictions."""
    flat = preds["label"] * NUM_DIGITS + preds["pred_digit"]
    return torch.bincount(flat, minlength=NUM_DIGITS * NUM_DIGITS).view(NUM_DIGITS, NUM_DIGITS).tolist()
