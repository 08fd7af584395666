"""Batched, reproducible augmentation: small random affine warps (rotation, scale, shear, shift).

Each sample's warp parameters are drawn from a counter-based hash of (seed, epoch, index), like its number
(`mnist_sum.batches` draws them once per epoch, on the device), so a resumed run, another process count or
another batch size sees exactly the same pixels. The warp runs on the whole batch at once, on the training
device (`affine_grid` + `grid_sample`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnist_sum.config import AugmentConfig


def warp(images: torch.Tensor, cfg: AugmentConfig, u: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 28, 28] in 0..255, each image warped by its own affine transform, made
    from its row of `u` ([B, 5] in [-1, 1): rotation, scale, shear, shift x, shift y)."""
    angle = u[:, 0] * math.radians(cfg.rotate_deg)
    scale = 1.0 + u[:, 1] * cfg.scale
    shear = u[:, 2] * cfg.shear
    shift = u[:, 3:5] * (2.0 * cfg.shift_px / 28.0)  # affine_grid works in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], dim=1),
                         torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1)
    x = images.unsqueeze(1).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1)
