"""Read back what an offline W&B run logged: its `run-*.wandb` file, a LevelDB-style log of protobuf records."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", 7  # 7-byte file header: ":W&B", magic, version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a record header never straddles blocks: the tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == FULL:
            records.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            records.append(pending + payload)
    return [wandb_internal_pb2.Record.FromString(r) for r in records]


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history(path: Path) -> list[dict]:
    """Each logged row as {key: value}, with W&B's own `_step`; nested keys joined with '/'."""
    return [_items(r.history.item) for r in read_records(path) if r.WhichOneof("record_type") == "history"]


def summary(path: Path) -> dict:
    out = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            out.update(_items(record.summary.update))
    return out


def config(path: Path) -> dict:
    out = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            out.update(_items(record.config.update))
    return out


def merged_history(files: list[Path]) -> list[dict]:
    """The history W&B holds after `wandb sync` of a run's offline segments in start order: a row whose step
    is at or below the last step already uploaded is dropped."""
    rows: list[dict] = []
    for path in files:
        rows += [row for row in history(path) if not rows or row["_step"] > rows[-1]["_step"]]
    return rows


def artifacts(path: Path) -> list[dict]:
    """Each artifact the run logged: name, type, aliases, metadata and the paths of its files."""
    return [{"name": r.artifact.name, "type": r.artifact.type, "aliases": list(r.artifact.aliases),
             "metadata": json.loads(r.artifact.metadata or "{}"),
             "files": sorted(entry.path for entry in r.artifact.manifest.contents)}
            for r in read_records(path) if r.WhichOneof("record_type") == "artifact"]
