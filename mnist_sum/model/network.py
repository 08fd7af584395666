"""The two-headed network: a conv trunk reads the digit; a small head adds the number to it.

The sum head sees only the digit *distribution* p (softmax of the digit logits) and the one-hot
number, so it has to learn addition over digits rather than re-read the pixels; both heads train
together through one loss, the mean of their cross-entropies. The default head is bilinear: one
linear layer over the outer product of p and the one-hot number, i.e. for each number a learned
linear map from p to the 19 sum logits. Addition is such a map (logit of s = p[s - n]), so the head
can add exactly, ties included; an MLP over [p, one-hot] only approximates it, and fails to add on
some val images whose digit it read right (docs/results.md: The sum head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_sum.config import ModelConfig
from mnist_sum.model.layers import KeyedDropout, norm_layer

NUM_DIGITS = 10
NUM_SUMS = 19  # 0 + 0 .. 9 + 9
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# The bilinear head's input has one non-zero column (the number's), summing to 1, so each of its logits
# moves by about one step size per Adam step: at the default's warm-up learning rates it took epochs to
# learn to add. Scaling its input by 10 is a 10x learning rate for this layer alone, and it adds after the
# first epoch (docs/results.md: The sum head, measured on val).
BILINEAR_INPUT_SCALE = 10.0


def _stage(c_in: int, c_out: int, cfg: ModelConfig, groups_per_step: int) -> nn.Sequential:
    """`convs_per_stage` 3x3 conv-norm-ReLU layers, then halve the resolution."""
    layers: list[nn.Module] = []
    for i in range(cfg.convs_per_stage):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=cfg.norm == "none"),
                   norm_layer(cfg.norm, c_out, cfg.norm_group, groups_per_step), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


def _digit_head(cfg: ModelConfig) -> nn.Sequential:
    """The trunk's feature map -> 10 digit logits: global average pooling and one linear layer, or (with
    `fc_hidden`) the whole map flattened into a fully connected hidden layer, which is cheap next to a
    convolution at full resolution and carries most of the parameters."""
    width = cfg.channels[-1]
    if not cfg.fc_hidden:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), KeyedDropout(cfg.dropout), nn.Linear(width, NUM_DIGITS))
    side = 28 >> len(cfg.channels)  # each stage halves the resolution, rounding down
    return nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, cfg.fc_hidden), nn.ReLU(inplace=True),
                         KeyedDropout(cfg.dropout), nn.Linear(cfg.fc_hidden, NUM_DIGITS))


class SumNet(nn.Module):
    def __init__(self, cfg: ModelConfig, global_batch_size: int = 0) -> None:
        super().__init__()
        widths, groups = [1, *cfg.channels], max(1, global_batch_size // cfg.norm_group)
        self.trunk = nn.Sequential(*(_stage(a, b, cfg, groups) for a, b in zip(widths, widths[1:])))
        self.digit_head = _digit_head(cfg)
        self.bilinear_sum = cfg.sum_head == "bilinear"
        if self.bilinear_sum:
            self.sum_head = nn.Linear(NUM_DIGITS * NUM_DIGITS, NUM_SUMS)
        elif cfg.sum_head == "concat":  # the original design: [p, one-hot n] -> one linear layer
            self.sum_head = nn.Linear(2 * NUM_DIGITS, NUM_SUMS)
        else:
            self.sum_head = nn.Sequential(
                nn.Linear(2 * NUM_DIGITS, cfg.sum_hidden), nn.ReLU(inplace=True), nn.Linear(cfg.sum_hidden, NUM_SUMS)
            )
        self.channels_last = cfg.channels_last
        self.test_shifts = cfg.test_shifts

    def digit_logits(self, images: torch.Tensor, noise_key: torch.Tensor | None = None,
                     shifts: int | None = None) -> torch.Tensor:
        """uint8 images [B, 28, 28] -> digit logits [B, 10]. In evaluation with `shifts` (default `test_shifts`),
        the log of the digit probabilities averaged over the image's shifted views (fp32): a digit a pixel off the
        centre the net learned is read by the views that put it back, and the sum head, linear in the
        probabilities, adds their mean exactly. `noise_key`: each sample's dropout key (training only; see
        layers.KeyedDropout)."""
        s = self.test_shifts if shifts is None else shifts
        if self.training or not s:
            return self._one_view(images, noise_key)
        padded = F.pad(images, (s, s, s, s))
        probs = sum(self._one_view(padded[:, s + dy:s + dy + 28, s + dx:s + dx + 28]).float().softmax(dim=-1)
                    for dy in range(-s, s + 1) for dx in range(-s, s + 1))
        return (probs / (2 * s + 1) ** 2).log()

    def _one_view(self, images: torch.Tensor, noise_key: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images [B, 28, 28] -> digit logits [B, 10]. Normalising here keeps the weights self-contained."""
        x = (images.unsqueeze(1).float() / 255.0 - MNIST_MEAN) / MNIST_STD
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.trunk(x)
        for layer in self.digit_head:  # a Sequential, run by hand to hand the dropout its keys
            x = layer(x, noise_key) if isinstance(layer, KeyedDropout) else layer(x)
        return x

    def sum_logits(self, digit_logits: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(digit logits [B, 10], numbers [B] in 0..9) -> sum logits [B, 19], in fp32 under any autocast: in bf16
        the head's product rounds p to 8 bits, and near-tied digits then add wrong (the addition table, set by
        hand, got 4,627 of 10,000 such rows wrong under bf16 autocast). The head is 2k multiply-adds a sample."""
        with torch.autocast(digit_logits.device.type, enabled=False):
            probs = digit_logits.float().softmax(dim=-1)
            # Not F.one_hot: on the CPU it checks its input's range, a host read every step.
            one_hot = (numbers.unsqueeze(1) == torch.arange(NUM_DIGITS, device=numbers.device)).to(probs.dtype)
            if self.bilinear_sum:
                # Row d, column n of the outer product holds p[d] if n is the number, else 0.
                outer = probs.unsqueeze(2) * one_hot.unsqueeze(1)
                return self.sum_head(outer.flatten(1) * BILINEAR_INPUT_SCALE)
            return self.sum_head(torch.cat([probs, one_hot], dim=-1))

    def forward(self, images: torch.Tensor, numbers: torch.Tensor,
                noise_key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        digits = self.digit_logits(images, noise_key)
        return digits, self.sum_logits(digits, numbers)


def build_model(cfg: ModelConfig, global_batch_size: int = 0) -> SumNet:
    """`global_batch_size`: what the network trains on (ghost BatchNorm weighs its groups by it); 0 when it
    only evaluates."""
    model = SumNet(cfg, global_batch_size)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def sum_loss(digit_logits: torch.Tensor, sum_logits: torch.Tensor, labels: torch.Tensor, numbers: torch.Tensor,
             label_smoothing: float = 0.0, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, digit CE, sum CE); the total is the mean of the two cross-entropies.
    `reduction="none"` gives them per sample (for scoring)."""
    digit_ce = F.cross_entropy(digit_logits.float(), labels, label_smoothing=label_smoothing, reduction=reduction)
    sum_ce = F.cross_entropy(sum_logits.float(), labels + numbers, label_smoothing=label_smoothing, reduction=reduction)
    return (digit_ce + sum_ce) / 2, digit_ce, sum_ce
