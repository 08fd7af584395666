"""Batched, reproducible augmentation: small random affine warps (rotation, scale, shear, shift).

Each sample's warp is drawn from a counter-based hash of (seed, epoch, index), like its number, so a
resumed run, another process count or another batch size sees exactly the same pixels. The warp runs
on the whole batch at once, on the training device (`affine_grid` + `grid_sample`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mnist_sum.config import AugmentConfig
from mnist_sum.streams import STREAM_IDS, splitmix64, stream_key


def uniforms(seed: int, epoch: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """[len(index), count] floats in [-1, 1), a pure function of (seed, epoch, index)."""
    key = np.uint64(stream_key(seed, STREAM_IDS["augment"], epoch))
    idx = index.cpu().numpy().astype(np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)
    bits = splitmix64(idx ^ key) >> np.uint64(11)  # 53 random bits: exact in a float64
    return torch.from_numpy(bits.astype(np.float64) / 2.0**52 - 1.0).float()


def warp(images: torch.Tensor, cfg: AugmentConfig, seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 28, 28] in 0..255, each image warped by its own affine transform."""
    u = uniforms(seed, epoch, index, 5).to(images.device)
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
