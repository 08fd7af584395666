"""A digit drawn as its outline (a stencil's, an edge tracer's) made solid again: step 5 of predict's framing
(mnist_sum/data/framing.py); what each choice measured: docs/robustness.md, How predict's framing was chosen."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mnist_sum.data.paper import SPECK_MIN_SIDE, longer_side, mask_width

HOLLOW_LENGTH = 12.0  # a hole in the ink this long for its depth (area / depth^2) can be a stroke's inside
HOLLOW_LEVELS = (0.3, 0.5, 0.7)  # shares of the strongest ink at which an outline's insides are looked for
VALLEY_DEPTH = 0.1  # a pixel this share of the strongest ink below two opposite neighbours is a valley in the ink
HOLLOW_WALL = 0.9  # the share of the ink that must be such holes' walls for the digit to be taken as an outline
WALL_SHARE = 0.15  # an outline's walls are at most this share of its box's longer side wide (thin lines)


def filled_outlines(ink: np.ndarray) -> np.ndarray:
    """A digit drawn as its outline (a stencil's, an edge tracer's) made solid again. The holes in the ink that
    are a stroke's inside are filled, if nearly all the ink (HOLLOW_WALL) is their wall. A stroke's inside is
    long for its depth (area at least HOLLOW_LENGTH x depth squared), and one wall away from the paper outside the
    digit; a written digit's loops are round, and an outline's loop is a wall, a stroke's inside and a wall
    away. Measured in the walls' own width, so an outline at any size is filled (docs/robustness.md has the
    shares that set the two constants). The ink is taken at each of HOLLOW_LEVELS of the strongest in turn: an
    edge detector's output is not zero along a stroke's middle, only lower than at its two edges, and opens
    there at a higher level, and only in places: where its valley stays above the level, the pixels lower than
    both their neighbours across it (`_valleys`) still open it. Below SPECK_MIN_SIDE a stroke is a pixel or two
    wide and has no inside."""
    if min(ink.shape) < SPECK_MIN_SIDE:
        return ink
    valley = _valleys(ink) > VALLEY_DEPTH * ink.max()
    for level in HOLLOW_LEVELS:
        inside = _outline_inside(_bridges_opened(ink > level * ink.max(), valley))
        if inside is not None:
            filled = np.where(inside, ink.max(), ink)
            # What is left of the valley where it stays above the level, in pieces too short to be an inside,
            # closed over (within the outline only: its outer edge stays as drawn).
            closed = ndimage.grey_closing(filled, footprint=ndimage.generate_binary_structure(2, 1))
            return np.where(ndimage.binary_fill_holes(filled > level * ink.max()), closed, filled)
    return ink


def _valleys(ink: np.ndarray) -> np.ndarray:
    """How far each pixel lies below both its neighbours on opposite sides (across, down or either diagonal),
    in the direction where it lies deepest: a valley one pixel wide, as between an edge detector's two lines."""
    padded = np.pad(ink, 1, mode="edge")
    h, w = ink.shape

    def beside(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    depth = np.zeros_like(ink)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        depth = np.maximum(depth, np.minimum(beside(dy, dx), beside(-dy, -dx)) - ink)
    return depth


def _thin_holes(holes: np.ndarray) -> tuple[np.ndarray, int]:
    """The holes one or two pixels wide (none of their pixels two pixels from a wall), labelled with those that
    meet across a corner as one: the valley between an edge detector's two lines that runs diagonally is one
    hole, not a row of single pixels."""
    labels, count = ndimage.label(holes)
    depth = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(holes), labels, range(count + 1)))
    return ndimage.label(holes & (depth[labels] < 1.5), structure=np.ones((3, 3)))


def _hole_labels(holes: np.ndarray) -> tuple[np.ndarray, int]:
    """Holes labelled as `ndimage.label` does, except that thin ones meeting across a corner are one
    (`_thin_holes`). Wider holes are not joined so: a loop cut by a thread drawn across it stays cut."""
    thin, thin_count = _thin_holes(holes)
    wide, wide_count = ndimage.label(holes & (thin == 0))
    return np.where(wide > 0, wide + thin_count, thin), thin_count + wide_count


def _bridges_opened(inked: np.ndarray, valley: np.ndarray) -> np.ndarray:
    """The mask less the valley pixels that join two or more of its holes one or two pixels wide: the bridges
    across an edge detector's double line. Wider holes (a written loop, a loop cut by a line) are left as they are,
    and so are valley pixels beside one hole only (a loop's jagged rim)."""
    labels, _ = _thin_holes(ndimage.binary_fill_holes(inked) & ~inked)
    thin = labels > 0
    joined, pieces = ndimage.label(thin | (valley & inked), structure=np.ones((3, 3)))
    pairs = np.unique(np.stack([joined[thin], labels[thin]]), axis=1)
    thin_holes = np.bincount(pairs[0], minlength=pieces + 1)
    return inked & ~(valley & (thin_holes[joined] >= 2))


def _outline_inside(inked: np.ndarray) -> np.ndarray | None:
    """The strokes' insides of a mask drawn as outlines (`filled_outlines`), or None if it is not one. Its walls
    are thin lines (WALL_SHARE): an edge tracer's or a stencil's are at most 0.13 of the digit's box (select part),
    where a bold face's 0, whose narrow counter is as long for its depth as a stroke's inside, has walls 0.18-0.23
    of it and was filled into a blob (a bold italic one, its walls thinner at the higher levels, 0.13-0.15, still
    is: docs/robustness.md)."""
    solid = ndimage.binary_fill_holes(inked)
    holes = solid & ~inked
    labels, count = _hole_labels(holes)
    if count == 0:
        return None
    width = mask_width(inked)
    if width > WALL_SHARE * longer_side(inked):
        return None
    wall = max(1, int(np.ceil(width)))
    index = range(1, count + 1)
    depth = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(holes), labels, index))
    area = np.asarray(ndimage.sum(holes, labels, index))
    square = np.ones((3, 3), bool)
    beyond_one_wall = ndimage.binary_dilation(~solid, square, iterations=wall + 1)
    near_outside = np.asarray(ndimage.maximum(beyond_one_wall, labels, index)) > 0
    inside = np.isin(labels, 1 + np.nonzero((area >= HOLLOW_LENGTH * depth ** 2) & near_outside)[0])
    walls = inked & ndimage.binary_dilation(inside, square, iterations=wall)
    return inside if walls.sum() >= HOLLOW_WALL * inked.sum() else None
