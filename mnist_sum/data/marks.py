"""Marks a person draws round a digit, taken out before it is framed: a box or a ring (a form's cell, a circled
digit) and a line under it (step 5 of predict's framing, mnist_sum/data/framing.py; what each choice measured:
docs/robustness.md, How predict's framing was chosen)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from mnist_sum.data.paper import BOX_THRESHOLD, SPECK_MIN_SIDE, longer_side

ENCLOSURE_SOLIDITY = 0.9  # a piece of ink that encloses the rest is a box or a ring if it is this convex ...
ENCLOSURE_ROOM = 0.15  # ... and leaves room around what it encloses: a disc this share of its side across
ENCLOSED_SIDE = 0.4  # what it encloses is a digit if its largest piece spans this share of the inside
BOX_SIDE_SHARE = 0.08  # a line along a side of the ink's box at most this thick (of its side) may be a box's
UNDERLINE_FLAT = 0.15  # a piece under the digit at most this thick for its length is a line drawn under it ...
UNDERLINE_TILT = 30.0  # ... if it runs within this many degrees of level


def without_enclosure(ink: np.ndarray) -> np.ndarray:
    """Ink less a box or a ring drawn round the digit, apart from it (a form's cell, a circled digit): it widened
    the digit's box to its own, and the space between them, long for its width, was filled as an outline's
    inside. The enclosing piece (above BOX_THRESHOLD, its inside holding most of the other ink) must be convex
    (ENCLOSURE_SOLIDITY: a digit's outline round its holes is not, but for a 0's) and leave room inside
    (ENCLOSURE_ROOM: an outlined 0's outer wall runs a stroke's width from its inner one), and the largest piece
    it encloses must span ENCLOSED_SIDE of its inside (a 0's dot does not, nor the dots of a line through a 0).
    Chosen on bench/robustness.py's select part (docs/robustness.md)."""
    if min(ink.shape) < SPECK_MIN_SIDE:
        return ink
    inked = ink > BOX_THRESHOLD * ink.max()
    labels, _ = ndimage.label(inked, structure=np.ones((3, 3)))
    for piece, box in enumerate(ndimage.find_objects(labels), start=1):
        ring = np.zeros_like(inked)
        ring[box] = labels[box] == piece
        if not (inked[box] & ~ring[box]).any():
            continue  # nothing else within its box (most pieces: the digit's own, specks)
        inside = ndimage.binary_fill_holes(ring) & ~ring
        enclosed = inked & inside
        if not enclosed.any() or ink[enclosed].sum() < 0.5 * ink[inked & ~ring].sum():
            continue
        pieces, _ = ndimage.label(enclosed, structure=np.ones((3, 3)))
        largest = pieces == np.argmax(np.bincount(pieces[enclosed]))
        if longer_side(largest) < ENCLOSED_SIDE * min(np.ptp(np.nonzero(inside), axis=1) + 1):
            continue  # a 0's dot, or the dots of a dotted line through it
        room = ndimage.distance_transform_edt(inside & ~ndimage.binary_fill_holes(enclosed)).max()
        if room < ENCLOSURE_ROOM * longer_side(ring) or _solidity(ring | inside) < ENCLOSURE_SOLIDITY:
            continue
        gone = ndimage.binary_dilation(ring, np.ones((3, 3), bool)) & ~enclosed  # with its fringe below the threshold
        return without_enclosure(np.where(gone, 0.0, ink))  # a box in a box
    return ink


def without_box_sides(ink: np.ndarray) -> np.ndarray:
    """Ink less a box drawn on the digit's edges, touching it (a form's tight cell): thin lines (BOX_SIDE_SHARE)
    along all four sides of the ink's box, each across 90% of it, as rulings are across the image (framing's
    `_without_rulings`). A digit has a bar along one or two sides of its box, not four; kept whole if nothing
    else is left. Chosen on bench/robustness.py's select part (docs/robustness.md)."""
    if min(ink.shape) < SPECK_MIN_SIDE or not ink.any():
        return ink
    inked = ink > BOX_THRESHOLD * ink.max()
    (top, bottom), (left, right) = _span(inked.any(axis=1)), _span(inked.any(axis=0))
    box = inked[top:bottom, left:right]
    most = max(2, round(BOX_SIDE_SHARE * max(box.shape)))
    sides = []
    for full in (box.mean(axis=1) >= 0.9, box.mean(axis=0) >= 0.9):
        near, far = np.nonzero(full[:most])[0], np.nonzero(full[::-1][:most])[0]  # full lines in either end's band
        if not (len(near) and len(far)):
            return ink
        sides.append((near[-1] + 1, len(full) - far[-1] - 1))
    inner = (slice(top + sides[0][0], top + sides[0][1]), slice(left + sides[1][0], left + sides[1][1]))
    keep = np.zeros_like(ink)
    keep[inner] = ink[inner]
    return keep if keep.max() >= BOX_THRESHOLD * ink.max() else ink


def without_underline(ink: np.ndarray) -> np.ndarray:
    """Ink less a line drawn under the digit, apart from it (an underlined 6 or 9, a form's line shorter than the
    image): the lowest piece, if it is a straight line near level (`_is_underline`) at least half as wide as the
    rest of the ink and wholly below it. Looked for before rulings are taken out: a digit a ruling is taken out
    of leaves a flat piece under the rest. Chosen on bench/robustness.py's select part (docs/robustness.md)."""
    if min(ink.shape) < SPECK_MIN_SIDE:
        return ink
    inked = ink > BOX_THRESHOLD * ink.max()
    labels, count = ndimage.label(inked, structure=np.ones((3, 3)))
    if count < 2:
        return ink
    boxes = ndimage.find_objects(labels)
    lowest = max(range(count), key=lambda i: boxes[i][0].start)
    rows, cols = boxes[lowest]
    line = labels == lowest + 1
    rest = inked & ~line
    rest_rows, rest_cols = _span(rest.any(axis=1)), _span(rest.any(axis=0))
    wide = cols.stop - cols.start >= 0.5 * (rest_cols[1] - rest_cols[0])
    if wide and rows.start >= rest_rows[1] and _is_underline(line):
        return np.where(ndimage.binary_dilation(line, np.ones((3, 3), bool)), 0.0, ink)
    return ink


def _is_underline(piece: np.ndarray) -> bool:
    """A mask at most UNDERLINE_FLAT as thick as it is long, along its own axis, which runs within UNDERLINE_TILT
    of level. Not its box's height: a line drawn by hand is tilted, and its box is as tall as the tilt. Length and
    thickness from the spread of its pixels along and across the axis (a bar L long spreads L^2 / 12 along it;
    each pixel a unit square, so a single pixel is as thick as it is long)."""
    ys, xs = np.nonzero(piece)
    spread = np.cov(np.stack([xs, ys]).astype(float), bias=True) + np.eye(2) / 12
    variances, axes = np.linalg.eigh(spread)  # ascending: across the axis, then along it
    thickness, length = np.sqrt(12 * variances)
    tilt = np.degrees(np.arctan2(abs(axes[1, 1]), abs(axes[0, 1])))
    return bool(thickness <= UNDERLINE_FLAT * length and tilt <= UNDERLINE_TILT)


def _span(any_ink: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the True entries."""
    rows = np.nonzero(any_ink)[0]
    return int(rows[0]), int(rows[-1]) + 1


def _solidity(region: np.ndarray) -> float:
    """A region's area over its convex hull's (pixels counted whole: the hull of their centres, half its perimeter
    and a pixel added): 1 for a filled rectangle or disc, less for a digit's shape."""
    hull = ConvexHull(np.argwhere(region))
    return float(region.sum() / (hull.volume + hull.area / 2 + 1))
