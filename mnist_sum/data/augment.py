"""Batched, reproducible augmentation: small random affine warps (rotation, scale, shear, shift) and the
corruptions of real images (noise, specks, lines, outlines, blur).

Each sample's warp parameters are drawn from a counter-based hash of (seed, epoch, index), like its number
(`mnist_sum.data.batches` draws them once per epoch, on the device), so a resumed run, another process count or
another batch size sees exactly the same pixels. The warp runs on the whole batch at once, on the training
device (`affine_grid` + `grid_sample`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnist_sum.config import AugmentConfig
from mnist_sum.data.streams import keyed_uniforms


def warp(images: torch.Tensor, cfg: AugmentConfig, u: torch.Tensor, noise_key: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 28, 28] in 0..255, each image warped by its own affine transform, made
    from its row of `u` ([B, 5] in [-1, 1): rotation, scale, shear, shift x, shift y), and, with
    `cfg.elastic_px`, bent by its own smooth displacement field (drawn from its noise_key)."""
    angle = u[:, 0] * math.radians(cfg.rotate_deg)
    scale = 1.0 + u[:, 1] * cfg.scale
    shear = u[:, 2] * cfg.shear
    shift = u[:, 3:5] * (2.0 * cfg.shift_px / 28.0)  # affine_grid works in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], dim=1),
                         torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1)
    x = images.unsqueeze(1).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if cfg.elastic_px:
        grid = grid + _elastic_field(noise_key, cfg.elastic_px, cfg.elastic_points)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1)


def _elastic_field(noise_key: torch.Tensor, largest_px: float, points: int) -> torch.Tensor:
    """[B, 28, 28, 2] displacements in affine_grid's [-1, 1] units: each sample's own random offsets (up to
    `largest_px` pixels each axis) at a `points` x `points` lattice, interpolated bicubically over the image.
    A smooth field the way Simard et al. (2003) smoothed per-pixel noise with a Gaussian, without a convolution
    (mnist_sum/model/flops.py counts convolutions as model compute; see _gaussian_blur)."""
    b = noise_key.shape[0]
    u = keyed_uniforms(_ELASTIC_KEY, noise_key, 2 * points * points).view(b, 2, points, points) * 2 - 1
    field = F.interpolate(u * (2.0 * largest_px / 28.0), size=(28, 28), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


CORRUPTIONS = ("noise", "specks", "line", "outline", "blur")
_PARAMS_KEY, _PIXELS_KEY, _ELASTIC_KEY = 2, 1, 3  # apart from dropout's (0): the same sample key, independent draws


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, 28, 28] blurred by a 5-tap Gaussian along each axis, as weighted sums of shifted copies: elementwise
    work like the rest of the augmentation, which is not counted as model compute (mnist_sum/model/flops.py counts
    convolutions, so a conv2d here would add to every run's FLOPs)."""
    weights = [math.exp(-d * d / (2 * sigma * sigma)) for d in range(-2, 3)]
    weights = [w / sum(weights) for w in weights]
    for dim in (1, 2):
        padded = F.pad(images, (2, 2, 0, 0) if dim == 2 else (0, 0, 2, 2))
        images = sum(w * padded.narrow(dim, i, 28) for i, w in enumerate(weights))
    return images


def corrupt(images: torch.Tensor, share: float, noise_key: torch.Tensor) -> torch.Tensor:
    """float [B, 28, 28] in 0..255 -> the same with a `share` of the images given one of CORRUPTIONS (which one,
    how strong, where: from each sample's noise_key, so a function of (seed, epoch, index) like its warp):
    noise: uniform noise of 60-140 grey levels; specks: 4-14% of pixels set black or white; line: a line
    across the image, straight or zigzag, solid or dotted; outline: the strokes' outer edge only; blur: a
    Gaussian blur. What people and scanners do to digits (bench/robustness.py measures it with its own,
    different corruptions)."""
    b = images.shape[0]
    u = keyed_uniforms(_PARAMS_KEY, noise_key, 8)
    v = keyed_uniforms(_PIXELS_KEY, noise_key, 28 * 28).view(b, 28, 28) * 2 - 1
    kind = torch.where(u[:, 0] < share, (u[:, 0] / share * len(CORRUPTIONS)).long(), -1)
    s = u[:, 1].view(b, 1, 1)  # strength
    noise = images + (60 + 80 * s) * v
    specks = torch.where(v.abs() > 1 - (0.04 + 0.1 * s), (v > 0).float() * 255, images)
    grid = (torch.arange(28, device=images.device, dtype=torch.float32) - 13.5) / 14
    ys, xs = grid.view(1, 28, 1), grid.view(1, 1, 28)
    angle = (u[:, 2] * math.pi).view(b, 1, 1)
    along = -xs * torch.sin(angle) + ys * torch.cos(angle)
    across = xs * torch.cos(angle) + ys * torch.sin(angle)
    triangle = 2 * torch.abs(torch.remainder(along * 3 + u[:, 5].view(b, 1, 1), 1) - 0.5) - 0.5  # -0.5..0.5
    wobble = (u[:, 4] > 0.5).view(b, 1, 1) * 0.2 * triangle  # half the lines zigzag
    distance = torch.abs(across - (u[:, 3].view(b, 1, 1) - 0.5) * 1.2 - wobble) * 14  # pixels from the line
    line = (150 + 105 * s) * torch.clamp(1.5 - distance, 0, 1)
    dotted = (u[:, 6] > 0.5).view(b, 1, 1) & (torch.sin(along * 14 * 1.3) < 0)
    line = torch.maximum(images, torch.where(dotted, 0.0, line))
    ink = (images > 127).float().unsqueeze(1)
    outline = (F.max_pool2d(ink, 3, 1, 1) - ink).squeeze(1) * 255
    blur = images + (0.6 + 0.4 * s) * (_gaussian_blur(images, 1.2) - images)
    out = images
    for i, corrupted in enumerate((noise, specks, line, outline, blur)):
        out = torch.where((kind == i).view(b, 1, 1), corrupted, out)
    return out.clamp(0, 255)
