"""Seventeen corruptions of the kind cameras, scanners and people add to a digit, for bench/robustness.py, and
digits in a box or a ring drawn round them (`boxed`: a form's cells, a circled digit), with a line under them
(`underlined`: an underlined 6 or 9, a form's line), written with a marker (`marker`: strokes 2-3 times as wide)
or photographed on paper (`photos`: colour, ruled or plain, lit unevenly, out of focus, JPEG).

Each takes one MNIST image (float [28, 28] in 0..1, light digit on black) and a numpy Generator and returns
the corrupted image (float, 0..1). The strengths are ones a person still reads easily (bench/robustness.py
--show writes a sheet of examples to look at). They are written here with numpy and PIL, on purpose apart
from the training augmentation (mnist_sum/data/augment.py): a benchmark that re-used the training transforms would
only measure how well the net learnt them.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(x * 255, 0, 255).astype(np.uint8))


def _float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def _affine(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp about the image centre by a 2x2 matrix (output -> input coordinates), bilinear."""
    c = np.array([13.5, 13.5])
    offset = c - matrix @ c
    coeffs = (matrix[0, 0], matrix[0, 1], offset[0], matrix[1, 0], matrix[1, 1], offset[1])
    return _float(_pil(x).transform((28, 28), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR))


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


def gaussian_noise(x, rng):
    return x + rng.normal(0, rng.uniform(0.2, 0.35), x.shape)


def salt_and_pepper(x, rng):
    y = x.copy()
    specks = rng.random(x.shape) < rng.uniform(0.06, 0.12)
    y[specks] = rng.random(int(specks.sum())) < 0.5
    return y


def blur(x, rng):
    return _float(_pil(x).filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.6))))


def motion_blur(x, rng):
    angle, length = rng.uniform(0, math.pi), rng.uniform(4, 6)
    steps = np.linspace(-length / 2, length / 2, 9)
    return np.mean([_shift(x, s * math.cos(angle), s * math.sin(angle)) for s in steps], axis=0)


def _shift(x, dx, dy):
    image = _pil(x).transform((28, 28), Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), Image.Resampling.BILINEAR)
    return _float(image)


def fog(x, rng):
    coarse = rng.random((4, 4)).astype(np.float32)
    field = _float(_pil(coarse).resize((28, 28), Image.Resampling.BICUBIC))
    return x + rng.uniform(0.4, 0.6) * field


def low_contrast(x, rng):
    return rng.uniform(0.3, 0.5) + rng.uniform(0.25, 0.4) * x


def grey_background(x, rng):
    level = rng.uniform(0.3, 0.6)
    return level + (1 - level) * x


def _line_image(points, width, dotted=False) -> np.ndarray:
    canvas = Image.new("L", (28, 28))
    draw = ImageDraw.Draw(canvas)
    if dotted:
        (x0, y0), (x1, y1) = points
        for t in np.linspace(0, 1, 9):  # dots about 3.4 px apart: gaps between them, as the name says
            cx, cy = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            draw.ellipse((cx - width / 2, cy - width / 2, cx + width / 2, cy + width / 2), fill=255)
    else:
        draw.line([tuple(p) for p in points], fill=255, width=width)
    return _float(canvas)


def _across(rng):
    """Two points on opposite sides of the frame, so a line between them crosses the digit's area."""
    a, b = rng.uniform(4, 24, 2)
    return [(0, a), (27, b)] if rng.random() < 0.5 else [(a, 0), (b, 27)]


def dotted_line(x, rng):
    return np.maximum(x, _line_image(_across(rng), 2, dotted=True))


def zigzag(x, rng):
    (x0, y0), (x1, y1) = _across(rng)
    t = np.linspace(0, 1, 7)
    px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    nx, ny = -(y1 - y0), x1 - x0
    norm = math.hypot(nx, ny)
    amp = rng.uniform(2, 4) * np.where(np.arange(7) % 2, 1, -1)
    points = np.stack([px + amp * nx / norm, py + amp * ny / norm], axis=1)
    return np.maximum(x, _line_image(points, 1))


def stripes(x, rng):
    period, phase = int(rng.integers(5, 8)), int(rng.integers(0, 5))
    lines = np.zeros((28, 28), np.float32)
    lines[phase::period] = rng.uniform(0.5, 0.8)
    return np.maximum(x, lines if rng.random() < 0.5 else lines.T)


def outlines(x, rng):
    ink = _pil((x > 0.5).astype(np.float32))
    grown = _float(ink.filter(ImageFilter.MaxFilter(3)))
    return np.clip(grown - (x > 0.5), 0, 1)


def edges(x, rng):
    """What an edge detector leaves of the digit: the Sobel gradient's magnitude, strongest edge at full ink."""
    magnitude = np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1))
    return magnitude / max(float(magnitude.max()), 1e-6)


def swapped_bands(x, rng):
    """Polarity swapped in bands, as a scanner's fault or a highlighter leaves it: the two outer quarters of the
    image (across or down), or one band of 6-10 px through the digit."""
    across = rng.random() < 0.5  # bands across the image (rows) or down it (columns)
    out = (x.T if across else x).copy()
    if rng.random() < 0.5:
        width = int(rng.integers(6, 9))
        out[:, :width], out[:, 28 - width:] = 1 - out[:, :width], 1 - out[:, 28 - width:]
    else:
        width = int(rng.integers(6, 11))
        start = int(rng.integers(4, 24 - width))
        out[:, start:start + width] = 1 - out[:, start:start + width]
    return out.T if across else out


def shift(x, rng):
    angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(3, 5)
    return _shift(x, dist * math.cos(angle), dist * math.sin(angle))


def rotate(x, rng):
    a = math.radians(rng.uniform(20, 35) * _sign(rng))
    return _affine(x, np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]))


def shear(x, rng):
    s = rng.uniform(0.3, 0.5) * _sign(rng)
    return _affine(x, np.array([[1, s], [0, 1]]) if rng.random() < 0.5 else np.array([[1, 0], [s, 1]]))


def scale(x, rng):
    zoom = rng.uniform(0.55, 0.7) if rng.random() < 0.5 else rng.uniform(1.15, 1.25)
    return _affine(x, np.eye(2) / zoom)


CORRUPTIONS = {f.__name__: f for f in (gaussian_noise, salt_and_pepper, blur, motion_blur, fog, low_contrast,
                                       grey_background, dotted_line, zigzag, stripes, outlines, shift, rotate,
                                       shear, scale, edges, swapped_bands)}


def corrupt(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28], image i corrupted with draws from (seed, kind, i)."""
    out = np.empty_like(images)
    kind_id = list(CORRUPTIONS).index(kind)
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, kind_id, i])
        out[i] = np.clip(CORRUPTIONS[kind](image.astype(np.float32) / 255, rng) * 255, 0, 255).round()
    return out


def _enlarged(x: np.ndarray, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """The digit enlarged to 40 px in the middle of side x side, moved up to 3 px (light on black)."""
    ink = Image.new("L", (side, side), 0)
    dy, dx = rng.integers(-3, 4, 2)
    ink.paste(Image.fromarray(x).resize((40, 40), Image.Resampling.BILINEAR), (12 + int(dx), 12 + int(dy)))
    return ink


def in_a_box(x: np.ndarray, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """uint8 [28, 28] MNIST digit -> a side x side image, dark ink on white: the digit enlarged to 40 px and moved
    up to 3 px, in a box (two thirds: 2-10 px in from the edges, as a form's cell is cropped) or a ring (0-3 px in,
    as a person circles a digit), drawn 1-3 px wide apart from it."""
    ink = _enlarged(x, rng, side)
    width = int(rng.integers(1, 4))
    frame = Image.new("L", (side, side), 0)
    if rng.random() < 2 / 3:
        inset = int(rng.integers(2, 11))
        ImageDraw.Draw(frame).rectangle((inset, inset, side - 1 - inset, side - 1 - inset), outline=255, width=width)
    else:
        inset = int(rng.integers(0, 4))
        ImageDraw.Draw(frame).ellipse((inset, inset, side - 1 - inset, side - 1 - inset), outline=255, width=width)
    return Image.fromarray(255 - np.maximum(np.asarray(ink), np.asarray(frame)))


def _each(images: np.ndarray, seed: int, stream: int, draw) -> list[Image.Image]:
    """uint8 [N, 28, 28] -> draw(image, rng) for each image, its rng from (seed, stream, i): a stream after the
    corruptions' own, one per set, so adding a set changes no other set's draws."""
    return [draw(x, np.random.default_rng([seed, len(CORRUPTIONS) + stream, i])) for i, x in enumerate(images)]


def boxed(images: np.ndarray, seed: int) -> list[Image.Image]:
    """uint8 [N, 28, 28] -> each digit in a box or a ring (`in_a_box`)."""
    return _each(images, seed, 0, in_a_box)


def underlined(images: np.ndarray, seed: int) -> list[Image.Image]:
    """uint8 [N, 28, 28] -> each digit as in `in_a_box`, with a line under it instead: 1-3 px thick, 4-8 px
    below its ink, as wide as the digit's ink up to 1.5 times, slanted by up to 2 px over its length."""
    def draw(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        ink = _enlarged(x, rng)
        rows, cols = np.nonzero(np.asarray(ink) > 25)
        middle, half = (cols.min() + cols.max()) / 2, (cols.max() - cols.min() + 1) / 2 * rng.uniform(1, 1.5)
        y, tilt = rows.max() + int(rng.integers(2, 7)) + 2, rng.uniform(-2, 2)
        ImageDraw.Draw(ink).line((middle - half, y - tilt, middle + half, y + tilt), fill=255, width=int(rng.integers(1, 4)))
        return Image.fromarray(255 - np.asarray(ink))

    return _each(images, seed, 1, draw)


def with_a_marker(ink: np.ndarray, tip: int) -> np.ndarray:
    """Light ink on black, its strokes widened as a round tip `tip` px across draws them."""
    yy, xx = np.mgrid[:tip, :tip] - (tip - 1) / 2
    return ndimage.grey_dilation(ink, footprint=yy ** 2 + xx ** 2 <= ((tip - 1) / 2) ** 2 + 0.5)


def marker(images: np.ndarray, seed: int) -> list[Image.Image]:
    """uint8 [N, 28, 28] -> each digit as in `in_a_box`, written with a marker instead: its strokes (3-4 px wide
    at 40 px) widened by a round tip 4-7 px across, to 2-3 times MNIST's pen."""
    return _each(images, seed, 2, lambda x, rng: Image.fromarray(
        255 - with_a_marker(np.asarray(_enlarged(x, rng)), int(rng.integers(4, 8)))))


PHOTO_SIDE = 128


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)


def photographed(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """uint8 [28, 28] MNIST digit -> a colour photo of it written on paper, PHOTO_SIDE square, as a phone takes
    one: the digit 40-90 px tall, turned up to 8 degrees, placed anywhere with a margin, in black or blue ink on
    off-white paper with a faint grain; half of them ruled (light blue lines 18-26 px apart, some with a red
    margin line); lit unevenly (10-35% darker from one side to the other); slightly out of focus, with sensor
    noise, saved as a JPEG of quality 50-90."""
    side = PHOTO_SIDE
    tall = int(rng.integers(40, 91))
    digit = Image.fromarray(x).resize((tall, tall), Image.Resampling.BICUBIC).rotate(
        rng.uniform(-8, 8), Image.Resampling.BILINEAR, expand=True)
    alpha = np.zeros((side, side), np.float32)
    top, left = (int(rng.integers(4, side - 4 - n + 1)) for n in digit.size[::-1])
    alpha[top:top + digit.size[1], left:left + digit.size[0]] = np.asarray(digit, np.float32) / 255
    paper = np.array([rng.uniform(225, 250), rng.uniform(220, 245), rng.uniform(205, 235)], np.float32)
    page = np.broadcast_to(paper, (side, side, 3)) + ndimage.gaussian_filter(rng.normal(0, 6, (side, side)), 1.5)[..., None]
    if rng.random() < 0.5:
        rule = np.array([170, 200, 235], np.float32)
        gap, start, width = int(rng.integers(18, 27)), int(rng.integers(0, 18)), int(rng.integers(1, 3))
        for y in range(start, side, gap):
            page[y:y + width] = rule
        if rng.random() < 0.3:
            column = int(rng.integers(6, 24))
            page[:, column:column + width] = np.array([225, 120, 120], np.float32)
    ink = np.array([40, 40, 45], np.float32) if rng.random() < 0.5 else np.array([35, 55, 150], np.float32)
    ink = ink + rng.uniform(-15, 15)
    image = page * (1 - alpha[..., None]) + ink * alpha[..., None]
    angle, fall = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.35)
    yy, xx = (np.mgrid[:side, :side] - side / 2) / side
    light = 1 - fall * (0.5 + math.cos(angle) * xx + math.sin(angle) * yy)
    image = ndimage.gaussian_filter(image * light[..., None], (rng.uniform(0.4, 1.0),) * 2 + (0,))
    image = image + rng.normal(0, rng.uniform(2, 6), image.shape)
    return _jpeg(Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8), "RGB"), int(rng.integers(50, 91)))


def photos(images: np.ndarray, seed: int) -> list[Image.Image]:
    """uint8 [N, 28, 28] -> each digit as a photo of it on paper (`photographed`)."""
    return _each(images, seed, 3, photographed)
