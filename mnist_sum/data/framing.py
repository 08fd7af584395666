"""Framing: any image of a digit -> the 28x28 frame an MNIST net reads (a light digit on black, scaled and
centred as the MNIST images were made).

Each step is what a person does without thinking, and each was chosen on the "select" part of
bench/robustness.py (corrupted val images and digits from outside MNIST; never MNIST test; what each choice
measured: docs/robustness.md, How the framing was chosen):
0. an image enlarged with smoothing is read at the size it was enlarged from (its size must not decide its answer);
1. specks are ignored: isolated pixels far off their neighbours are replaced (salt-and-pepper, dust);
2. the paper is the majority: polarity from the whole image, not its border (a border can be a stripe, fog
   or the digit itself): the paper's level is the median, and the side of it with more far-off mass is ink;
3. the paper is what is left when strokes are taken away: the background is a grey opening (strokes are
   thinner than the opening's window), smoothed, of the paper levelled first (light falling off from one
   side), so grey, uneven or foggy paper becomes black (a single paper level fails on fog);
4. only an image with no structure at all is blank (less than MIN_CONTRAST grey levels of ink);
5. a line one pixel wide run in from the edge (zigzag, dotted) is not the digit's, and a digit drawn as its
   outline is filled: a hollow stroke is still the stroke;
6. the ink's box, less light pieces apart from the digit (dots, noise), is scaled to fit 20x20 and its centre
   of mass put in the middle of 28x28, also for 28x28 images (a shifted or shrunken digit is framed again;
   one already framed as MNIST is kept); a narrow digit many strokes wide is also framed widened (a condensed
   face), and the net's surer reading of the two is kept.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from mnist_sum.errors import UsageError

ANALYSIS_SIDE = 256  # larger images are reduced first: the digit ends up 20 px tall, so nothing is lost
MIN_CONTRAST = 16.0  # grey levels of ink above the paper below which an image counts as blank
SPECK_LEVELS = 32.0  # a pixel this far beyond all but one of its 8 neighbours is a speck
SPECK_SHARE = 0.03  # below this share of speck-like pixels an image is taken as clean
RULING_SHARE = 0.04  # a line across the image at most this thick (of the image's side) is a ruling, not ink
SPECK_MIN_SIDE = 16  # below this a stroke is one pixel wide and looks like a speck, and the digit fills the image
BOX_THRESHOLD = 0.1  # share of the strongest ink that counts towards the digit's box (MNIST's boxes: 20 px)
FRAGMENT_SHARE = 0.1  # ink apart from the digit, lighter than this share of its largest piece, is not in its box
BACKGROUND_STROKES = 4  # in a tight crop, the paper's window spans at least this many stroke widths
BAND_SHARE = 0.15  # a band of swapped polarity is at least this share of the image wide; so are a line's ends
CROP_LEVEL = 0.3  # ink at this share of the strongest, reaching two edges, makes the image a tight crop
HOLLOW_LENGTH = 12.0  # a hole in the ink this long for its depth (area / depth^2) can be a stroke's inside
THREAD_WIDTH = 2  # ink in no THREAD_WIDTH x THREAD_WIDTH square of ink is a thread (MNIST's strokes are 2-4 px wide)
HOLLOW_LEVELS = (0.3, 0.5, 0.7)  # shares of the strongest ink at which an outline's insides are looked for
VALLEY_DEPTH = 0.1  # a pixel this share of the strongest ink below two opposite neighbours is a valley in the ink
HOLLOW_WALL = 0.9  # the share of the ink that must be such holes' walls for the digit to be taken as an outline
ENLARGED_FIT = 0.02  # misfit (RMS, of the image's contrast) under which an image is a smaller one enlarged
SCAN_SIDES = (6, 64)  # the sides of the small images an image may have been enlarged from (8x8 scans exist)
NARROW_ASPECT = 0.4  # a digit's box narrower than this share of its height, and ...
NARROW_STROKES = 3.5  # ... at least this many of its strokes wide, may be a condensed face: also read widened ...
WIDENED_ASPECT = 0.5  # ... to this share of its height
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


@lru_cache(maxsize=1024)
def _enlarging(small: int, large: int, resample: Image.Resampling) -> tuple[np.ndarray, np.ndarray]:
    """The [large, small] matrix of PIL's enlargement along one axis (it is separable), and its pseudo-inverse,
    which gives the small image that enlarges closest to a large one."""
    eye = np.eye(small, dtype=np.float32)
    matrix = np.stack([np.asarray(Image.fromarray(eye[j:j + 1]).resize((large, 1), resample))[0]
                       for j in range(small)], axis=1).astype(np.float64)
    return matrix, np.linalg.pinv(matrix)


def _unenlarged(x: np.ndarray) -> np.ndarray:
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


def _unswap_bands(x: np.ndarray) -> np.ndarray:
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


def _despeckle(x: np.ndarray) -> np.ndarray:
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


def _ink_is_dark(x: np.ndarray) -> bool:
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


def _stroke_width(x: np.ndarray) -> float:
    """The digit's typical stroke width in pixels (light ink): twice the median distance to the paper along the
    strokes' ridges, of the pixels above the midpoint between the paper's level and the brightest ink. Windows
    measured in strokes, not in image sides, frame an enlarged scan as its small original: its strokes are
    enlarged with it."""
    level = float(np.median(x))
    return _mask_width(x > (level + float(x.max())) / 2)


def _mask_width(inked: np.ndarray) -> float:
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


def _background(x: np.ndarray, stroke: float = 0.0) -> np.ndarray:
    """The paper under light ink: a grey opening with a window wider than any stroke, then smoothed, of the
    paper made level first (`_paper_plane`). Paper lit from one side is a slope, and an opening keeps a slope
    only where its window fits: at the bright edge it fell short by slope x window / 2, an edge of residue that
    widened the digit's box on paper much brighter at one end (tests/test_framing.py has such paper); levelling
    first leaves the select part's corruptions as they were. Below SPECK_MIN_SIDE the digit fills the image,
    and no plane would fit the paper (8x8 handwriting). The window is a third of the image, and at least
    BACKGROUND_STROKES times `stroke` wide (a tight crop's stroke width, see `to_mnist`)."""
    size = max(5, min(x.shape) // 3, int(BACKGROUND_STROKES * stroke)) | 1
    plane = _paper_plane(x) if min(x.shape) >= SPECK_MIN_SIDE else 0.0
    level = x - plane
    return ndimage.uniform_filter(ndimage.grey_opening(level, size, mode="nearest"), 3, mode="nearest") + plane


def _thin_runs(full: np.ndarray, most: int) -> np.ndarray:
    """The entries of `full` that belong to runs of True at most `most` long."""
    keep = np.zeros_like(full)
    labels, count = ndimage.label(full)
    for run in range(1, count + 1):
        members = labels == run
        keep |= members if members.sum() <= most else False
    return keep


def _without_rulings(ink: np.ndarray) -> np.ndarray:
    """Ink less thin lines across nearly the whole image: stripes, rulings, a frame's edge. A digit's bar that
    fills a tight crop is thicker than RULING_SHARE of the image, and at low resolution (below SPECK_MIN_SIDE)
    nothing is removed; kept whole if nothing else is left."""
    if min(ink.shape) < SPECK_MIN_SIDE:
        return ink
    inked = ink > BOX_THRESHOLD * ink.max()
    keep = ink.copy()
    for axis in (0, 1):
        full = inked.mean(axis=1 - axis) >= 0.9
        lines = _thin_runs(full, max(2, round(RULING_SHARE * ink.shape[axis])))
        if axis == 0:
            keep[lines] = 0
        else:
            keep[:, lines] = 0
    return keep if keep.max() >= BOX_THRESHOLD * ink.max() else ink


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


def _filled_outlines(ink: np.ndarray) -> np.ndarray:
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
    """The strokes' insides of a mask drawn as outlines (`_filled_outlines`), or None if it is not one."""
    solid = ndimage.binary_fill_holes(inked)
    holes = solid & ~inked
    labels, count = _hole_labels(holes)
    if count == 0:
        return None
    wall = max(1, int(np.ceil(_mask_width(inked))))
    index = range(1, count + 1)
    depth = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(holes), labels, index))
    area = np.asarray(ndimage.sum(holes, labels, index))
    square = np.ones((3, 3), bool)
    beyond_one_wall = ndimage.binary_dilation(~solid, square, iterations=wall + 1)
    near_outside = np.asarray(ndimage.maximum(beyond_one_wall, labels, index)) > 0
    inside = np.isin(labels, 1 + np.nonzero((area >= HOLLOW_LENGTH * depth ** 2) & near_outside)[0])
    walls = inked & ndimage.binary_dilation(inside, square, iterations=wall)
    return inside if walls.sum() >= HOLLOW_WALL * inked.sum() else None


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
    gray = _unswap_bands(_unenlarged(_gray(image)))
    if min(gray.shape) >= SPECK_MIN_SIDE:
        gray = _despeckle(gray)
    if _ink_is_dark(gray):
        gray = 255.0 - gray
    ink = np.clip(gray - _background(gray), 0, None)
    if ink.max() < MIN_CONTRAST:
        raise UsageError("the image is blank (no digit found)", "pass an image with a digit in it")
    unruled = _without_rulings(ink)
    # A tight crop (a low-resolution scan, however enlarged): strokes are a large share of the image, and a window
    # of a third of it took the enlarged ones for paper. One measured in strokes scales with the scan; and a line
    # across the whole of a tight crop is the digit's own bar, not a ruling.
    ink = np.clip(gray - _background(gray, _stroke_width(gray)), 0, None) if _fills_frame(unruled) else unruled
    ink = _filled_outlines(_without_threads(ink))
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
    return width < NARROW_ASPECT * height and width >= NARROW_STROKES * _mask_width(crop > 0.5 * crop.max())


def _widened(crop: np.ndarray) -> np.ndarray:
    size = (round(WIDENED_ASPECT * crop.shape[0]), crop.shape[0])
    return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _framed(crop: np.ndarray) -> np.ndarray:
    """The digit's crop scaled to fit 20x20, its centre of mass put in the middle of 28x28."""
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)
    frame = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = small
    dy, dx = (round(MNIST_CENTRE - c) for c in ndimage.center_of_mass(frame))
    return np.roll(frame, (dy, dx), axis=(0, 1)).round().astype(np.uint8)
