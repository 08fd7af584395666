"""Framing: any image of a digit -> the 28x28 frame an MNIST net reads (a light digit on black, scaled and
centred as the MNIST images were made).

Each step is what a person does without thinking, and each was chosen on the "select" part of
bench/robustness.py (corrupted val images and digits from outside MNIST; never MNIST test; what each choice
measured: docs/robustness.md, How predict's framing was chosen; steps 0-3 are in mnist_sum/data/paper.py,
the marks drawn round a digit and the outline fill of step 5 in mnist_sum/data/marks.py and outlines.py):
0. an image enlarged with smoothing is read at the size it was enlarged from (its size must not decide its answer);
1. specks are ignored: isolated pixels far off their neighbours are replaced (salt-and-pepper, dust);
2. the paper is the majority: polarity from the whole image, not its border (a border can be a stripe, fog
   or the digit itself): the paper's level is a wide blur of the image, and the side of it with more far-off
   mass is ink;
3. the paper is what is left when strokes are taken away: the background is a grey opening (strokes are
   thinner than the opening's window), smoothed, of the paper levelled first (light falling off from one
   side), so grey, uneven or foggy paper becomes black (a single paper level fails on fog);
4. only an image with no structure at all is blank (less than MIN_CONTRAST grey levels of ink);
5. a box or a ring drawn round the digit (a form's cell) or a line under it is not the digit's, nor a line one
   pixel wide run in from the edge (zigzag, dotted), and a digit drawn as its outline is filled: a hollow stroke
   is still the stroke;
6. the ink's box, less light pieces apart from the digit (dots, noise), is scaled to fit 20x20 and its centre
   of mass put in the middle of 28x28, also for 28x28 images (a shifted or shrunken digit is framed again;
   one already framed as MNIST is kept; a crop enlarged by half again or more is sharpened; strokes as wide as
   a marker's are thinned); a narrow digit many strokes wide is also framed widened (a condensed face), and the
   net's surer reading of the two is kept.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from mnist_sum.data.marks import without_box_sides, without_enclosure, without_underline
from mnist_sum.data.outlines import filled_outlines
from mnist_sum.data.paper import (
    BOX_THRESHOLD,
    MIN_CONTRAST,
    SPECK_MIN_SIDE,
    background,
    despeckle,
    ink_is_dark,
    longer_side,
    mask_width,
    stroke_width,
    unenlarged,
    unswap_bands,
)
from mnist_sum.errors import UsageError

ANALYSIS_SIDE = 256  # larger images are reduced first: the digit ends up 20 px tall, so nothing is lost
RULING_SHARE = 0.04  # a line across the image at most this thick (of the image's side) is a ruling, not ink ...
RULING_LEVEL = 0.05  # ... if its ink stands this share of the strongest above the rows beside it
FRAGMENT_SHARE = 0.1  # ink apart from the digit, lighter than this share of its largest piece, is not in its box
CROP_LEVEL = 0.3  # ink at this share of the strongest, reaching two edges, makes the image a tight crop
THREAD_WIDTH = 2  # ink in no THREAD_WIDTH x THREAD_WIDTH square of ink is a thread (MNIST's strokes are 2-4 px wide)
NARROW_ASPECT = 0.4  # a digit's box narrower than this share of its height, and ...
NARROW_STROKES = 3.5  # ... at least this many of its strokes wide, may be a condensed face: also read widened ...
WIDENED_ASPECT = 0.5  # ... to this share of its height
SHARPEN_FROM = 1.5  # a crop enlarged by this much or more into the frame is sharpened ...
SHARPEN_SIGMA = 1.0  # ... by an unsharp mask of this radius (pixels of the frame) ...
SHARPEN_AMOUNT = 1.0  # ... and this strength
THICK_STROKE = 0.25  # strokes wider than this share of the digit's box (a marker's) ...
STEEP_EDGES = 0.3  # ... with less than this share of their ink mid-grey (not a blur's soft ones) are thinned
MNIST_CENTRE = 14.0  # where MNIST put the centre of mass (it lies in [13.5, 14.5] for every training image)


def _gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))  # transparent = paper
    image = image.convert("L")
    if max(image.size) > ANALYSIS_SIDE:
        image = image.copy()
        image.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def _thin_runs(full: np.ndarray, most: int) -> np.ndarray:
    """The entries of `full` that belong to runs of True at most `most` long."""
    keep = np.zeros_like(full)
    labels, count = ndimage.label(full)
    for run in range(1, count + 1):
        members = labels == run
        keep |= members if members.sum() <= most else False
    return keep


def _without_rulings(ink: np.ndarray) -> np.ndarray:
    """Ink less thin lines across nearly the whole image, down or across: stripes, rulings, a frame's edge; the
    lines' own ink only, so a stroke they cross keeps its own (`_ruled`). A digit's bar that fills a tight crop
    is thicker than RULING_SHARE of the image, and at low resolution (below SPECK_MIN_SIDE) nothing is removed;
    kept whole if nothing else is left. Chosen on bench/robustness.py's select part (docs/robustness.md)."""
    if min(ink.shape) < SPECK_MIN_SIDE:
        return ink
    across, down = _ruled(ink), _ruled(ink.T).T
    keep = np.clip(ink - np.maximum(across, down), 0, None)
    return keep if keep.max() >= BOX_THRESHOLD * ink.max() else ink


def _ruled(ink: np.ndarray) -> np.ndarray:
    """The ink of the rulings across the image (rows): thin runs of rows (RULING_SHARE) whose ink stands
    RULING_LEVEL of the strongest above the rows beside them along 90% of their length, as strong as the line
    is drawn at each point (light falls off along it). Only the line's own ink: a stroke that crosses it is
    darker and keeps the rest, where taking the rows out cut the digit in two. A row's level is a low percentile
    of it: a digit's bar can cover most of a row that a ruling runs along."""
    most = max(2, round(RULING_SHARE * ink.shape[0]))
    level = np.percentile(ink, 10, axis=1)
    paper = ndimage.grey_opening(level, size=2 * most + 1)  # the level of the rows beside
    excess = level - paper
    above = ink - paper[:, None]
    along = above >= 0.5 * excess[:, None]  # the line's points, and the strokes' that cross it
    full = (excess >= RULING_LEVEL * ink.max()) & (along.mean(axis=1) >= 0.9)
    lines = np.zeros_like(ink)
    for r in np.nonzero(_thin_runs(full, most))[0]:
        # The line's level at each point, two ways, each blind where the other sees: interpolated between the
        # points no stroke crosses (not much above the line: a stroke as light as twice the line passes for
        # it), and a low share of the points around (a stroke along the line for half the row passes for it).
        alone = np.nonzero(above[r] <= 2 * excess[r])[0]
        between = np.interp(np.arange(ink.shape[1]), alone, above[r, alone])
        drawn = np.where(along[r], above[r], excess[r])  # beyond the line's ends: its level
        around = ndimage.percentile_filter(drawn, 25, size=ink.shape[1] // 2 | 1, mode="nearest")
        lines[r] = np.minimum(ndimage.median_filter(between, size=2 * most + 1, mode="nearest"), around)
    return lines


def _fills_frame(ink: np.ndarray) -> bool:
    """The digit's ink (above CROP_LEVEL of the strongest) reaches two or more edges of the image: a digit cropped
    tight, with no margin of paper (MNIST's frames, photos and drawings keep one; fog's residue is fainter)."""
    inked = ink > CROP_LEVEL * ink.max()
    return sum(bool(edge.any()) for edge in (inked[0], inked[-1], inked[:, 0], inked[:, -1])) >= 2


def _without_threads(ink: np.ndarray) -> np.ndarray:
    """Ink less threads that run in from the image's edge: a line one pixel wide (in no THREAD_WIDTH square of
    ink) drawn across the digit, zigzag or dotted, outside the strokes it crosses; such a line widened the box to
    the whole image and framed the digit small. A digit keeps a margin of paper, so its own thin parts (an
    outline's walls, a hairline serif) seldom reach the edge. Kept as it is: an image framed as MNIST (34-35 of
    every 10,000 MNIST digits end in a tip on the edge as thin as a thread, a diagonal two pixels wide), and one
    that would lose half its ink or more (a tight crop of a thin digit). The pixels beside a thread go with it
    (a line drawn smooth has a fringe), but not those of the strokes. Below SPECK_MIN_SIDE every stroke is a
    thread. Chosen on bench/robustness.py's select part (docs/robustness.md): strokes as openings by three
    pixels of a square instead of the whole square (a diagonal two pixels wide a stroke) won back half as much."""
    if min(ink.shape) < SPECK_MIN_SIDE:
        return ink
    top, bottom, left, right = _digit_box(ink)
    if _is_framed(ink, (bottom - top, right - left)):
        return ink  # an MNIST digit, whose tapered tips can reach the edge, and nothing across it
    inked = ink > CROP_LEVEL * ink.max()
    strokes = ndimage.binary_opening(inked, np.ones((THREAD_WIDTH, THREAD_WIDTH), bool))
    square = np.ones((3, 3), bool)
    labels, _ = ndimage.label(inked & ~strokes, structure=square)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    threads = np.isin(labels, edge[edge > 0])
    if not threads.any():
        return ink
    gone = ndimage.binary_dilation(threads, square) & ~strokes
    if ink[gone].sum() >= 0.5 * ink.sum():
        return ink
    return np.where(gone, 0.0, ink)


def _digit_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    """[top, bottom) and [left, right) of the ink above BOX_THRESHOLD, less the pieces far lighter than the
    largest (FRAGMENT_SHARE): the dots of a dotted line, noise, the ends of a line across the image, which
    widened the box and framed the digit too small. FRAGMENT_SHARE was chosen on the select part of
    bench/robustness.py: higher shares help dotted lines and noise until they start to cut stripes."""
    inked = ink > BOX_THRESHOLD * ink.max()
    labels, count = ndimage.label(inked, structure=np.ones((3, 3)))
    if count > 1:
        mass = ndimage.sum(ink, labels, range(1, count + 1))
        inked = np.isin(labels, 1 + np.nonzero(mass >= FRAGMENT_SHARE * mass.max())[0])
    rows, cols = np.nonzero(inked)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _is_framed(ink: np.ndarray, box: tuple[int, int]) -> bool:
    """A 28x28 image already framed as MNIST is: its box 20 px and its centre of mass in the middle. It is kept
    as it is: framing it again would move half of the MNIST digits by a pixel (their centres lie anywhere in
    [13.5, 14.5], and a net trained without augmentation misreads more of them when shifted)."""
    return ink.shape == (28, 28) and 19 <= max(box) <= 21 and all(
        abs(c - MNIST_CENTRE) <= 1 for c in ndimage.center_of_mass(ink))


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any image -> uint8 [28, 28], white digit on black, MNIST-style framing."""
    return mnist_views(image)[0]


def mnist_views(image: Image.Image) -> list[np.ndarray]:
    """Any image -> its MNIST frame (`to_mnist`), and for a digit that may be in a condensed face a second frame
    of it widened: the reader keeps the view the net is surer of (mnist_sum.inference.predict.read_surest)."""
    gray = unswap_bands(unenlarged(_gray(image)))
    if min(gray.shape) >= SPECK_MIN_SIDE:
        gray = despeckle(gray)
    if ink_is_dark(gray):
        gray = 255.0 - gray
    ink = np.clip(gray - background(gray), 0, None)
    if ink.max() < MIN_CONTRAST:
        raise UsageError("the image is blank (no digit found)", "pass an image with a digit in it")
    ink = without_underline(ink)
    unruled = _without_rulings(ink)
    # A tight crop (a low-resolution scan, however enlarged): strokes are a large share of the image, and a window
    # of a third of it took the enlarged ones for paper. One measured in strokes scales with the scan; and a line
    # across the whole of a tight crop is the digit's own bar, not a ruling.
    ink = np.clip(gray - background(gray, stroke_width(gray)), 0, None) if _fills_frame(unruled) else unruled
    ink = filled_outlines(_without_threads(without_box_sides(without_enclosure(ink))))
    ink *= 255.0 / ink.max()
    top, bottom, left, right = _digit_box(ink)
    crop = ink[top:bottom, left:right]
    if _is_framed(ink, crop.shape):
        return [ink.round().astype(np.uint8)]
    return [_framed(crop)] + ([_framed(_widened(crop))] if _condensed(crop) else [])


def _condensed(crop: np.ndarray) -> bool:
    """Narrow and several strokes wide: a tall condensed handwriting face (Amatic SC), fitted into 20x20 by its
    height, closes its loops and runs its strokes together. A slanted 1 can be as narrow and as many strokes
    wide (98 of MNIST's 55,000 training digits are 1s so), hence a second view, not a replacement: widened, a 1
    reads less surely than as it is (docs/robustness.md: What predict still misses)."""
    height, width = crop.shape
    return width < NARROW_ASPECT * height and width >= NARROW_STROKES * mask_width(crop > 0.5 * crop.max())


def _widened(crop: np.ndarray) -> np.ndarray:
    size = (round(WIDENED_ASPECT * crop.shape[0]), crop.shape[0])
    return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _framed(crop: np.ndarray) -> np.ndarray:
    """The digit's crop scaled to fit 20x20, its centre of mass put in the middle of 28x28; strokes as wide as a
    marker's thinned by a pixel each side and the digit framed again (`_too_thick`)."""
    frame = _placed(crop)
    if _too_thick(frame):
        thin = ndimage.grey_erosion(frame, size=(3, 3))  # a quarter of the digit wide: 2 px less is still a stroke
        top, bottom, left, right = _digit_box(thin)
        frame = _placed(thin[top:bottom, left:right].astype(np.float32))
    return frame


def _placed(crop: np.ndarray) -> np.ndarray:
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)
    if scale >= SHARPEN_FROM:
        small = _sharpened(small)
    frame = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = small
    dy, dx = (round(MNIST_CENTRE - c) for c in ndimage.center_of_mass(frame))
    return np.roll(frame, (dy, dx), axis=(0, 1)).round().astype(np.uint8)


def _too_thick(frame: np.ndarray) -> bool:
    """Strokes far wider than MNIST's pen (a marker's: more than THICK_STROKE of the digit's box at half the
    strongest ink, where MNIST's are 0.14 in the median); fitted into 20x20, such a digit closes its loops. A
    stroke wide only because it is soft (blurred, noisy: STEEP_EDGES or more of its ink between a quarter and
    three quarters of the strongest) is not. Chosen on bench/robustness.py's select part (docs/robustness.md)."""
    level = frame.astype(np.float32) / max(int(frame.max()), 1)
    inked = level > 0.5
    if not inked.any() or mask_width(inked) <= THICK_STROKE * longer_side(inked):
        return False
    return bool(np.mean(level[level > 0.25] < 0.75) < STEEP_EDGES)


def _sharpened(small: np.ndarray) -> np.ndarray:
    """An unsharp mask. A crop enlarged into the frame by half again or more (an 8x8 scan; a blurred image, read
    at the smaller size it fits, `unenlarged`) has soft edges where MNIST's digits, made by reducing sharp
    scans, have steep ones. Chosen on bench/robustness.py's select part (docs/robustness.md): sharper enlargements
    read better (Lanczos over bicubic over bilinear), and so did these frames; below SHARPEN_FROM a crop barely
    enlarged (stripes, a shifted or turned digit) lost a little."""
    return (small + SHARPEN_AMOUNT * (small - ndimage.gaussian_filter(small, SHARPEN_SIGMA))).clip(0, 255)
