"""MNIST's original IDX files as checked bytes, and reading them ahead of need.

Torch-free on purpose: `mnist-sum-train` starts reading the files (decompressing and checksumming them) in a
thread before it imports torch, so that they are read while torch loads: zlib and hashlib let go of the GIL
while they work (bench/fixed_cost.py, "setup").
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mnist_sum.config import PROJECT_ROOT
from mnist_sum.errors import UsageError

# SHA-256 of the *decompressed* original files (gzip output differs between gzip builds).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Reads started by read_ahead, by folder; read_idx_files takes each one (once) instead of reading again.
_AHEAD: dict[Path, Future[dict[str, bytes]]] = {}


def resolve_path(path: str) -> Path:
    """A relative path is taken from the working directory if it exists there, else from the project root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


def _read_file(folder: Path, name: str) -> bytes:
    for candidate, decompress in ((folder / f"{name}.gz", gzip.decompress), (folder / name, bytes)):
        if candidate.is_file():
            try:
                raw = decompress(candidate.read_bytes())
            except (OSError, EOFError, zlib.error) as err:
                raise UsageError(f"cannot read {candidate}: {err}", "restore the original MNIST file") from None
            if hashlib.sha256(raw).hexdigest() != IDX_SHA256[name]:
                raise UsageError(
                    f"{candidate} does not match the original MNIST checksum",
                    "restore it from data/mnist/ in a fresh clone (git checkout -- data/mnist)",
                )
            return raw
    raise UsageError(f"MNIST file {name}[.gz] not found in {folder}", "point data.idx_dir at a folder with the four IDX files")


def _read_all(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise UsageError(f"MNIST folder {str(folder)!r} not found", "set data.idx_dir to the folder with the IDX files")
    return {name: _read_file(folder, name) for names in SPLIT_FILES.values() for name in names}


def read_idx_files(folder: str | Path) -> dict[str, bytes]:
    """The four IDX files of `folder` (by name, decompressed), each checked against the original's checksum.
    A read started by `read_ahead` is waited for, and its error, if any, raised here."""
    folder = resolve_path(str(folder))
    ahead = _AHEAD.pop(folder, None)
    return ahead.result() if ahead is not None else _read_all(folder)


def read_ahead(folder: str | Path) -> None:
    """Start reading `folder`'s files in a thread; the next `read_idx_files(folder)` takes them."""
    folder = resolve_path(str(folder))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnist-read-ahead")
    _AHEAD[folder] = pool.submit(_read_all, folder)
    pool.shutdown(wait=False)  # the thread ends with its read
