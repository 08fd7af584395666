"""Paper and ink in any image of a digit, before the digit is looked at: an enlarged image taken back to its own
size, bands of swapped polarity made one polarity, specks removed, the ink's side found, and the paper under the
ink (grey, uneven, foggy) measured so that it can be taken away. Steps 0-3 of predict's framing
(mnist_sum/data/framing.py); what each choice measured: docs/robustness.md, How predict's framing was chosen."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

MIN_CONTRAST = 16.0  # grey levels of ink above the paper below which an image counts as blank
SPECK_LEVELS = 32.0  # a pixel this far beyond all but one of its 8 neighbours is a speck
SPECK_SHARE = 0.03  # below this share of speck-like pixels an image is taken as clean
BOX_THRESHOLD = 0.1  # share of the strongest ink that counts towards the digit's box (MNIST's boxes: 20 px)
SPECK_MIN_SIDE = 16  # below this a stroke is one pixel wide and looks like a speck, and the digit fills the image
BACKGROUND_STROKES = 4  # in a tight crop, the paper's window spans at least this many stroke widths
BAND_SHARE = 0.15  # a band of swapped polarity is at least this share of the image wide; so are a line's ends
ENLARGED_FIT = 0.02  # misfit (RMS, of the image's contrast) under which an image is a smaller one enlarged
SCAN_SIDES = (6, 64)  # the sides of the small images an image may have been enlarged from (8x8 scans exist)


@lru_cache(maxsize=1024)
def _enlarging(small: int, large: int, resample: Image.Resampling) -> tuple[np.ndarray, np.ndarray]:
    """The [large, small] matrix of PIL's enlargement along one axis (it is separable), and its pseudo-inverse,
    which gives the small image that enlarges closest to a large one."""
    eye = np.eye(small, dtype=np.float32)
    matrix = np.stack([np.asarray(Image.fromarray(eye[j:j + 1]).resize((large, 1), resample))[0]
                       for j in range(small)], axis=1).astype(np.float64)
    return matrix, np.linalg.pinv(matrix)


def unenlarged(x: np.ndarray) -> np.ndarray:
    """An enlarged image (a low-resolution scan a viewer or a driver scaled up, smoothed or in blocks) as the
    smaller image it was made from, so that it frames as that image does: at any enlargement the same steps see
    the same pixels. The smallest size (SCAN_SIDES, at most half the image's) whose bilinear or blockwise
    enlargement fits the image to ENLARGED_FIT of its contrast; an image with finer detail is kept as it is.
    Chosen on bench/robustness.py's select part (docs/robustness.md): bilinear and blockwise enlargements, also
    saved as JPEG, fit to 0.1-1%, bicubic ones to 1-2%; blurred digits, which read better at their own size, fit
    to 1-2%; the outside digits and the other corruptions read as before."""
    h, w = x.shape
    contrast = float(x.max() - x.min())
    if contrast < MIN_CONTRAST:
        return x
    for rows in range(SCAN_SIDES[0], min(SCAN_SIDES[1], h // 2) + 1):
        cols = round(rows * w / h)
        if not SCAN_SIDES[0] <= cols <= w // 2:
            continue
        for resample in (Image.Resampling.BILINEAR, Image.Resampling.NEAREST):
            (down, down_pinv), (across, across_pinv) = _enlarging(rows, h, resample), _enlarging(cols, w, resample)
            small = down_pinv @ x @ across_pinv.T
            if np.sqrt(np.mean((down @ small @ across.T - x) ** 2)) < ENLARGED_FIT * contrast:
                return small.clip(0, 255).astype(np.float32)
    return x


def unswap_bands(x: np.ndarray) -> np.ndarray:
    """Bands of swapped polarity (a scanner's fault, a highlighter's stripe) made one polarity again. Along one
    axis, each line's paper level (the median of its two ends, BAND_SHARE of the image each, where a digit
    seldom is) falls into two groups whose levels are each other's inverse (P and 255 - P; a shadow darkens
    paper and ink alike, and fog or stripes do not split so), each in runs at least BAND_SHARE of the image
    wide: the lines of the lighter group are inverted. Below SPECK_MIN_SIDE the digit fills the image, and a
    line's ends are the digit's."""
    if min(x.shape) < SPECK_MIN_SIDE:
        return x
    for axis in (0, 1):
        side, edge = x.shape[axis], max(2, round(BAND_SHARE * x.shape[axis]))
        ends = np.concatenate([np.take(x, range(edge), axis), np.take(x, range(side - edge, side), axis)], axis)
        paper = np.median(ends, axis=axis)  # one level per column (axis 0) or row (axis 1)
        low, high = float(paper.min()), float(paper.max())
        if high - low < 96 or abs(low + high - 255) > 64:
            continue
        light = paper > (low + high) / 2
        runs = [np.bincount(ndimage.label(group)[0])[1:].min() for group in (light, ~light)]
        spread = max(float(np.abs(paper[g] - np.median(paper[g])).max()) for g in (light, ~light))
        if min(runs) < BAND_SHARE * len(paper) or spread > 48:  # paper is even within a band; a digit's ends are not
            continue
        out = x.copy()
        if axis == 0:
            out[:, light] = 255 - out[:, light]
        else:
            out[light] = 255 - out[light]
        return out
    return x


def despeckle(x: np.ndarray) -> np.ndarray:
    """Pixels far above (or below) all but one of their 8 neighbours take their 3x3 median: isolated specks
    and pairs go, while a line one pixel wide (two neighbours along it) stays. A plain median filter also
    wiped thin strokes and outlines."""
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    second_highest = ndimage.rank_filter(x, -2, footprint=ring, mode="nearest")
    second_lowest = ndimage.rank_filter(x, 1, footprint=ring, mode="nearest")
    speck = (x > second_highest + SPECK_LEVELS) | (x < second_lowest - SPECK_LEVELS)
    if speck.mean() < SPECK_SHARE:
        return x  # a clean image keeps its pixels (a few stroke tips look like specks too)
    return np.where(speck, ndimage.median_filter(x, 3, mode="nearest"), x)


def ink_is_dark(x: np.ndarray) -> bool:
    """Which side of the paper the ink is on: the side with more mass well off the paper's level. The level is
    a wide blur of the image, so that paper lit unevenly is level; not the border (stripes, fog or the digit
    itself can lie there). A whole-image median instead failed on paper twice as bright at one end (the ink
    pulls the median its way, and the paper beyond it outweighed a thin digit). Below SPECK_MIN_SIDE the
    digit fills the image and a blur would be mostly digit: there the level is the median (a blur inverted
    some 8x8 handwritten digits)."""
    level = np.median(x) if min(x.shape) < SPECK_MIN_SIDE else ndimage.uniform_filter(x, min(x.shape) // 2, mode="reflect")
    light = np.clip(x - level - MIN_CONTRAST, 0, None).sum()
    dark = np.clip(level - x - MIN_CONTRAST, 0, None).sum()
    return bool(dark > light)


def stroke_width(x: np.ndarray) -> float:
    """The digit's typical stroke width in pixels (light ink): twice the median distance to the paper along the
    strokes' ridges, of the pixels above the midpoint between the paper's level and the brightest ink. Windows
    measured in strokes, not in image sides, frame an enlarged scan as its small original: its strokes are
    enlarged with it."""
    level = float(np.median(x))
    return mask_width(x > (level + float(x.max())) / 2)


def longer_side(mask: np.ndarray) -> int:
    """The longer side of the box round a boolean mask's True pixels."""
    return int(max(np.ptp(np.nonzero(mask), axis=1))) + 1


def mask_width(inked: np.ndarray) -> float:
    """The typical width in pixels of the strokes of a boolean mask: twice the median distance to its outside
    along the strokes' ridges."""
    distance = ndimage.distance_transform_edt(inked)
    ridge = inked & (distance >= ndimage.maximum_filter(distance, 3))
    return 2.0 * float(np.median(distance[ridge])) if ridge.any() else 1.0


def _paper_plane(x: np.ndarray) -> np.ndarray:
    """The paper's level where light falls off from one side to the other: a plane fitted by least squares to
    the whole image, then again to the pixels at or below it, the paper (the ink is light here, and the
    minority). A curved surface (light falling off towards the corners too) also fitted the hole of a 0 and
    moved clean digits; a plane does not."""
    rows, cols = (c.ravel() / max(x.shape) for c in np.mgrid[0:x.shape[0], 0:x.shape[1]])
    design = np.stack([np.ones_like(rows), rows, cols], axis=1)
    values = x.ravel().astype(np.float64)
    first = design @ np.linalg.lstsq(design, values, rcond=None)[0]
    paper = values - first <= np.median(values - first)
    return (design @ np.linalg.lstsq(design[paper], values[paper], rcond=None)[0]).reshape(x.shape)


def background(x: np.ndarray, stroke: float = 0.0) -> np.ndarray:
    """The paper under light ink: a grey opening with a window wider than any stroke, then smoothed, of the
    paper made level first (`_paper_plane`). Paper lit from one side is a slope, and an opening keeps a slope
    only where its window fits: at the bright edge it fell short by slope x window / 2, an edge of residue that
    widened the digit's box on paper much brighter at one end (tests/test_framing.py has such paper); levelling
    first leaves the select part's corruptions as they were. Below SPECK_MIN_SIDE the digit fills the image,
    and no plane would fit the paper (8x8 handwriting). The window is a third of the image, and at least
    BACKGROUND_STROKES times `stroke` wide (a tight crop's stroke width, see framing.mnist_views)."""
    size = max(5, min(x.shape) // 3, int(BACKGROUND_STROKES * stroke)) | 1
    plane = _paper_plane(x) if min(x.shape) >= SPECK_MIN_SIDE else 0.0
    level = x - plane
    return ndimage.uniform_filter(ndimage.grey_opening(level, size, mode="nearest"), 3, mode="nearest") + plane
