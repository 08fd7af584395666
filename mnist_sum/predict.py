"""Prediction on image files: digit and sum, with their probabilities, for images of any size.

Photos and drawings are brought into MNIST's form first: grayscale, a light digit on a dark background
(a dark-on-light image is inverted), the digit's bounding box scaled to fit 20x20 and placed in a 28x28
frame with its centre of mass in the middle, as the MNIST images were made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mnist_sum.errors import UsageError
from mnist_sum.outputs import load_weights, resolve_weights

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
MAX_PIXELS = 40_000_000  # a 40-megapixel photo is plenty; beyond that it is more likely a mistake or a bomb


def open_image(path: Path) -> Image.Image:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"{path}: unknown image type {path.suffix or '(no extension)'!r}",
                         "use one of " + ", ".join(sorted(IMAGE_SUFFIXES)))
    if not path.is_file():
        raise UsageError(f"image {str(path)!r} not found", "check the path")
    try:
        image = Image.open(path)
        if image.width * image.height > MAX_PIXELS:
            raise UsageError(f"{path} is {image.width}x{image.height} pixels, too large", "scale it below 40 megapixels")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        raise UsageError(f"{path} is not a readable image", "pass a PNG or JPEG file") from None
    if image.width < 1 or image.height < 1:
        raise UsageError(f"{path} is empty (0 pixels)", "pass an image with a digit in it")
    return image


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any image -> uint8 [28, 28], white digit on black, MNIST-style framing."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))  # transparent = paper
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper: MNIST is the other way round
        gray, border = 255.0 - gray, 255.0 - border
    gray = np.clip(gray - np.median(border), 0, None)  # the paper becomes exactly black
    if gray.max() <= 0:
        raise UsageError("the image is blank", "pass an image with a digit in it")
    gray = gray * (255.0 / gray.max())
    if gray.shape == (28, 28):
        return gray.round().astype(np.uint8)  # already MNIST-sized: keep its framing
    rows, cols = np.nonzero(gray > 0.1 * 255)
    crop = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)
    frame = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = small
    # Shift so that the centre of mass sits at the centre, as in MNIST.
    ys, xs = np.indices(frame.shape)
    mass = frame.sum()
    dy, dx = round(13.5 - (ys * frame).sum() / mass), round(13.5 - (xs * frame).sum() / mass)
    frame = np.roll(frame, (dy, dx), axis=(0, 1))
    return frame.round().astype(np.uint8)


def predict_files(weights: str, number: int, paths: list[str]) -> list[dict]:
    """Digit and sum (each with its probability) for each image file, with `number` added."""
    model = load_weights(resolve_weights(weights)[0])
    images = torch.from_numpy(np.stack([to_mnist(open_image(Path(p))) for p in paths]))
    numbers = torch.full((len(paths),), number, dtype=torch.long)
    with torch.no_grad():
        digit_probs, sum_probs = (logits.float().softmax(-1) for logits in model(images, numbers))
    results = []
    for path, dp, sp in zip(paths, digit_probs, sum_probs):
        digit, total = int(dp.argmax()), int(sp.argmax())
        results.append({"image": path, "number": number, "digit": digit, "digit_prob": round(float(dp[digit]), 6),
                        "sum": total, "sum_prob": round(float(sp[total]), 6)})
    return results
