"""Final run outputs: the scored weights (safetensors, with the model config inside) and per-sample predictions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mnist_sum.config import ModelConfig, with_former_defaults
from mnist_sum.errors import UsageError
from mnist_sum.files import atomic_write, write_text
from mnist_sum.model.network import SumNet, build_model
from mnist_sum.model.scoring import Predictions

PREDICTION_COLUMNS = ("index", "label", "number", "pred_digit", "pred_sum")
WEIGHTS = "model.safetensors"  # a finished run's weights, in its folder


def saved_model_config(tree: dict) -> ModelConfig:
    """The model config a run saved (its `model` section), with the keys it predates as they then were."""
    return ModelConfig(**with_former_defaults({"model": tree})["model"])


def save_weights(path: Path, model: SumNet, cfg: ModelConfig) -> None:
    """Weights plus the model config in the file's metadata, so the file alone rebuilds the network."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model_config": json.dumps(asdict(cfg))}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def resolve_weights(target: str | Path) -> tuple[Path, Path | None]:
    """(weights file, its run folder or None) from a run folder or a .safetensors path (checkpoint folders:
    mnist_sum.inference.saved)."""
    path = Path(target)
    if path.is_dir():
        return path / WEIGHTS, path
    return path, path.parent if (path.parent / "config.yaml").is_file() else None


def load_weights(path: str | Path, cfg: ModelConfig | None = None) -> SumNet:
    """Rebuild the network from a model.safetensors written by `save_weights`, or from weights without a model
    config inside (a checkpoint's) with `cfg`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {str(path)!r} not found", "pass a run folder or its model.safetensors")
    try:
        tensors = load_file(str(path))
        if cfg is None:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            cfg = saved_model_config(json.loads(metadata["model_config"]))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, UsageError) as err:
        raise UsageError(f"{path} is not a readable mnist-sum weights file ({type(err).__name__})",
                         "pass the model.safetensors of a finished run, or one of its step_* checkpoints") from None
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError:
        raise UsageError(f"{path} does not match the network its metadata describes",
                         "the file is damaged; use the model.safetensors of a finished run") from None
    return model.eval()


def save_predictions(path: Path, preds: Predictions) -> None:
    """One CSV line per test sample, ordered by index: index,label,number,pred_digit,pred_sum."""
    order = preds["index"].argsort()
    table = torch.stack([preds[c][order].long() for c in PREDICTION_COLUMNS], dim=1).tolist()
    lines = [",".join(PREDICTION_COLUMNS)] + [",".join(map(str, r)) for r in table]
    write_text(path, "\n".join(lines) + "\n")
