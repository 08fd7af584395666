"""Digits from outside MNIST, for bench/robustness.py: printed fonts, drawn strokes and a handwriting set.

- fonts: every digit in each of the fonts matplotlib ships that has digits (DejaVu, STIX, Computer Modern), dark
  ink on light paper at 80x80, a few sizes and small rotations each;
- hand_fonts: the same for the handwriting faces on PyPI (font-amatic-sc, font-intuitive: Amatic SC bold and
  regular, tall and condensed; Intuitive, rounded);
- strokes: each digit drawn as pen strokes from a template, with random slant, proportions, wobble, pen width
  and polarity (on a grey or white or black background), 80x80;
- handwriting: scikit-learn's digits (UCI optical recognition of handwritten digits: 1,797 digits by 43
  writers, 8x8 pixels, 17 grey levels), passed as the 8x8 images they are;
- enlarged: the same digits as a low-resolution scan enlarged 2x, 3x, 4x or 8x, smoothed (bilinear) or in
  blocks (nearest), in turn: a person reads them as the originals, so the framing must too (compare the
  handwriting row).

Each set has two parts: "select" (used to choose recipes and predict's preprocessing) and "report" (only
scored): the fonts alternate between the parts font by font, the strokes and the handwriting image by image.
All are PIL images as a user would pass them to `mnist-sum-predict`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _has_digits(path: Path) -> bool:
    """Every digit drawn, each its own glyph: the DejaVu "Display" fonts have none (they drew blank images, which
    counted as misreads), and a font without a glyph may draw one box for all ten."""
    font = ImageFont.truetype(str(path), 40)
    masks = [font.getmask(str(digit)) for digit in range(10)]
    drawn = [bytes(mask) for mask in masks if mask.getbbox()]
    return len(drawn) == 10 and len(set(drawn)) == 10


# cmmi10 has old-style digits and the symbol fonts have none.
FONTS = sorted(p for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")
               if p.stem.startswith(("DejaVu", "cmr", "cmb", "cmss", "cmtt", "cmti", "STIXGeneral")) and _has_digits(p))


def fonts(part: str) -> tuple[list[Image.Image], np.ndarray]:
    return printed(FONTS, part)


def hand_fonts(part: str) -> tuple[list[Image.Image], np.ndarray]:
    """Handwriting faces from PyPI (Pimoroni's font packages, SIL OFL): Amatic SC, tall and condensed, bold and
    regular; Intuitive, rounded."""
    import font_amatic_sc
    import font_intuitive

    paths = [Path(p) for p in [*font_amatic_sc.font_files.values(), *font_intuitive.font_files.values()]]
    return printed(sorted((p for p in paths if _has_digits(p)), key=lambda p: p.name), part)


def printed(paths: list[Path], part: str) -> tuple[list[Image.Image], np.ndarray]:
    """Every digit of every other font (select: the first, third, ...; report: the others)."""
    images, labels = [], []
    for f, path in enumerate(paths):
        if f % 2 != (part == "report"):
            continue
        for size in (40, 56):
            font = ImageFont.truetype(str(path), size)
            for digit in range(10):
                for angle in (-6, 6):
                    canvas = Image.new("L", (80, 80), 255)
                    ImageDraw.Draw(canvas).text((40, 40), str(digit), fill=0, font=font, anchor="mm")
                    images.append(canvas.rotate(angle, Image.Resampling.BILINEAR, fillcolor=255))
                    labels.append(digit)
    return images, np.array(labels)


def _arc(cx, cy, rx, ry, start, stop, n=12):
    t = np.radians(np.linspace(start, stop, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


# Pen strokes of each digit in a unit box (x right, y down); angles in degrees, clockwise from 3 o'clock.
TEMPLATES = {
    0: [_arc(0.5, 0.5, 0.32, 0.45, -90, 270, 24)],
    1: [[(0.35, 0.2), (0.55, 0.03), (0.52, 0.97)]],
    2: [_arc(0.5, 0.3, 0.3, 0.25, 190, 380) + [(0.15, 0.97), (0.88, 0.97)]],
    3: [_arc(0.48, 0.27, 0.28, 0.23, 200, 450) + _arc(0.48, 0.73, 0.32, 0.25, -90, 160)],
    4: [[(0.68, 0.97), (0.68, 0.03), (0.1, 0.66), (0.92, 0.66)]],
    5: [[(0.82, 0.03), (0.28, 0.03), (0.22, 0.45)] + _arc(0.5, 0.68, 0.32, 0.28, 220, 500)[:-4]],
    6: [[(0.72, 0.03)] + _arc(0.52, 0.7, 0.33, 0.27, 180, 540)],
    7: [[(0.12, 0.04), (0.88, 0.04), (0.38, 0.97)]],
    8: [_arc(0.5, 0.26, 0.25, 0.22, 90, 450, 20), _arc(0.5, 0.72, 0.3, 0.25, -90, 270, 20)],
    9: [_arc(0.48, 0.3, 0.3, 0.26, 0, 360, 20) + [(0.72, 0.97)]],
}


def _stroke_digit(digit: int, rng: np.random.Generator) -> Image.Image:
    slant, aspect, angle = rng.uniform(-0.3, 0.3), rng.uniform(0.6, 1.0), math.radians(rng.uniform(-10, 10))
    width = int(rng.integers(4, 10))
    paper, ink = (255, 0) if rng.random() < 0.5 else (0, 255)
    if rng.random() < 0.3:
        paper = int(rng.integers(90, 170))  # a grey background, either polarity
    canvas = Image.new("L", (80, 80), paper)
    draw = ImageDraw.Draw(canvas)
    for stroke in TEMPLATES[digit]:
        p = np.array(stroke) - 0.5 + rng.normal(0, 0.02, (len(stroke), 2))
        p[:, 0] = (p[:, 0] + slant * -p[:, 1]) * aspect
        p = p @ np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        draw.line([tuple(q) for q in p * 56 + 40], fill=ink, width=width, joint="curve")
    return canvas


def strokes(part: str, per_digit: int = 60) -> tuple[list[Image.Image], np.ndarray]:
    offset = 0 if part == "select" else 1
    labels = np.repeat(np.arange(10), per_digit)
    images = [_stroke_digit(int(d), np.random.default_rng([2 * i + offset, 20])) for i, d in enumerate(labels)]
    return images, labels


def handwriting(part: str) -> tuple[list[Image.Image], np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

    data = load_digits()
    keep = np.arange(len(data.target)) % 2 == (part == "report")
    images = [Image.fromarray((x * 255 / 16).round().astype(np.uint8)) for x in data.images[keep]]
    return images, data.target[keep]


ENLARGE = (2, 3, 4, 8)


def enlarged(part: str) -> tuple[list[Image.Image], np.ndarray]:
    images, labels = handwriting(part)
    resample = (Image.Resampling.BILINEAR, Image.Resampling.NEAREST)
    return [im.resize((8 * ENLARGE[i % 4], 8 * ENLARGE[i % 4]), resample[i // 4 % 2])
            for i, im in enumerate(images)], labels


SETS = {"fonts": fonts, "hand_fonts": hand_fonts, "strokes": strokes, "handwriting": handwriting, "enlarged": enlarged}
