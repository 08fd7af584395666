"""MNIST sources -> `{"train": (images, labels), "test": (images, labels)}` as uint8 / int64 tensors.

Two sources: the original IDX files (bundled in `data/mnist/`, checksum-verified on every load, read by
`mnist_sum.data.idx_files`) and
Hugging Face `datasets` in the `ylecun/mnist` schema (hub name, parquet folder or `save_to_disk`
folder). Either way the result is plain in-memory tensors: MNIST is 55 MB, so everything after this
point is tensor indexing, never per-sample Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnist_sum.data.idx_files import SPLIT_FILES, read_idx_files, resolve_path
from mnist_sum.errors import UsageError

Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    # IDX header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then big-endian sizes.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{name} is not an IDX file of unsigned bytes", "use the original MNIST files")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise UsageError(f"{name} is truncated: header says {shape}, file has {len(raw) - offset} bytes of data",
                         "restore the original MNIST file")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def load_idx(folder: str | Path) -> Splits:
    """Read the four IDX files of `folder`; each must match the original checksum."""
    files = read_idx_files(folder)
    splits: Splits = {}
    for split, (image_name, label_name) in SPLIT_FILES.items():
        images = _parse_idx(files[image_name], image_name)
        labels = _parse_idx(files[label_name], label_name)
        splits[split] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return splits


def _hf_splits(spec: str):
    """Open a `datasets` DatasetDict from a save_to_disk folder, a parquet folder, or a hub name."""
    import datasets  # here, not at the top: start-up the IDX path does not need (docs/benchmarks.md: Start-up)

    path = resolve_path(spec)  # a local folder if one exists by that name, else a hub name
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    if path.is_dir():
        files = {split: sorted(str(f) for f in path.rglob(f"*{split}*.parquet")) for split in ("train", "test")}
        missing = [split for split, found in files.items() if not found]
        if missing:
            raise UsageError(f"no {' or '.join(missing)} parquet files in {path}",
                             "name them like train-00000-of-00001.parquet and test-00000-of-00001.parquet")
        return datasets.load_dataset("parquet", data_files=files)
    try:
        return datasets.load_dataset(spec)
    except Exception as err:  # the hub client raises many types; the user needs the one line either way
        raise UsageError(f"cannot load Hugging Face dataset {spec!r}: {str(err).splitlines()[0]}",
                         "log in / go online once to cache it, or point data.hf_dataset at local parquet files") from None


def _hf_to_tensors(ds, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not {"image", "label"} <= set(ds.column_names):
        raise UsageError(f"{split} split has columns {ds.column_names}, expected 'image' and 'label'",
                         "use a dataset in the ylecun/mnist schema")
    # Decoding 70k PNGs is the slow part (seconds); it happens once per run, on the main process first.
    arrays = ds.with_format("numpy")
    images = np.stack([np.asarray(img, dtype=np.uint8) for img in arrays["image"]])
    labels = np.asarray(arrays["label"], dtype=np.int64)
    if images.shape[1:] != (28, 28):
        raise UsageError(f"{split} images have shape {images.shape[1:]}, expected (28, 28)", "use MNIST-sized images")
    if labels.min() < 0 or labels.max() > 9:
        raise UsageError(f"{split} labels fall outside 0..9", "use a dataset in the ylecun/mnist schema")
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_hf(spec: str) -> Splits:
    dsd = _hf_splits(spec)
    for split in ("train", "test"):
        if split not in dsd:
            raise UsageError(f"Hugging Face dataset {spec!r} has no {split!r} split", "it needs 'train' and 'test' splits")
    return {split: _hf_to_tensors(dsd[split], split) for split in ("train", "test")}
