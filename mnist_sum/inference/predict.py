"""Prediction on image files: digit and sum, with their probabilities, for images of any size.

Photos and drawings are brought into MNIST's form first (`mnist_sum.data.framing`). Every file gets its own
answer: one that cannot be read, or holds no digit, gets an error naming it, and the others are still read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mnist_sum.data.framing import mnist_views
from mnist_sum.errors import UsageError
from mnist_sum.inference.saved import open_saved

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


def frame_file(path: str) -> list[np.ndarray]:
    """One image file -> its 28x28 MNIST frames (mnist_views); a UsageError naming the file if it has none."""
    image = open_image(Path(path))  # its errors name the file
    try:
        return mnist_views(image)
    except UsageError as err:  # the framing's do not know it
        raise UsageError(f"{path}: {err.what}", err.fix) from None


def predict_files(weights: str, number: int, paths: list[str]) -> list[dict]:
    """For each image file, in order: its digit and sum (each with its probability), `number` added; or, for a
    file that cannot be read or holds no digit, {"image": path, "error": the one-line reason}."""
    model = open_saved(weights).model
    views, results = {}, {}
    for i, path in enumerate(paths):
        try:
            views[i] = frame_file(path)
        except UsageError as err:
            results[i] = {"image": path, "error": err.line().removeprefix("mnist-sum: error: ")}
    if views:
        with torch.no_grad():
            logits = read_surest(model, list(views.values()), number)
        digit_probs, sum_probs = (x.float().softmax(-1) for x in logits)
        for i, dp, sp in zip(views, digit_probs, sum_probs):
            digit, total = int(dp.argmax()), int(sp.argmax())
            results[i] = {"image": paths[i], "number": number, "digit": digit, "digit_prob": round(float(dp[digit]), 6),
                          "sum": total, "sum_prob": round(float(sp[total]), 6)}
    return [results[i] for i in range(len(paths))]


def read_surest(model: torch.nn.Module, views: list[list[np.ndarray]], number: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's (digit logits, sum logits) from the view of it whose digit the net reads most surely (most
    images have one view: framing.mnist_views)."""
    frames = [frame for image_views in views for frame in image_views]
    digit_logits, sum_logits = model(torch.from_numpy(np.stack(frames)), torch.full((len(frames),), number))
    sure = digit_logits.float().softmax(-1).amax(-1).tolist()
    starts = np.cumsum([0] + [len(image_views) for image_views in views])
    rows = [max(range(a, b), key=sure.__getitem__) for a, b in zip(starts[:-1], starts[1:])]
    return digit_logits[rows], sum_logits[rows]


def answer_line(result: dict) -> str:
    """One answer as a line: "digit 7 (93.2%), 7 + 3 = 10 (91.8%)". The sum head reads the digit head's
    probabilities, and where two digits are nearly tied it can settle on the other one (quick: 2-7 of the 10,000 test
    images, docs/results.md: The sum head); "9 + 3 = 11" would then print arithmetic the net did not do, so the
    line says which digit the sum stands for."""
    digit, number, total = result["digit"], result["number"], result["sum"]
    head = f"{result['image']}: digit {digit} ({result['digit_prob']:.1%}), "
    if total == digit + number:
        return head + f"{digit} + {number} = {total} ({result['sum_prob']:.1%})"
    read = (f"the sum head read the digit as {total - number}" if 0 <= total - number <= 9
            else f"no digit plus {number} makes {total}")
    return head + f"sum {total} ({result['sum_prob']:.1%}) with {number}: {read}"
