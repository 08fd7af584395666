"""The training loop, readable top to bottom.

setup (Accelerator, run folder, data, model) -> for each epoch: train steps (forward, backward,
step, schedule, log) -> validate -> keep the best-val weights; then score the test split once, on
those weights, and write the results.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import accelerate
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from mnist_sum.config import Config
from mnist_sum.data import load_splits, make_datasets, make_loader, set_epoch
from mnist_sum.errors import UsageError
from mnist_sum.evaluate import metrics, predict
from mnist_sum.files import write_json, write_text
from mnist_sum.model import build_model, sum_loss
from mnist_sum.outputs import save_predictions, save_weights
from mnist_sum.tracking import Tracker


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float) -> float:
    """Multiplier of the peak LR at `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return 1.0
    warmup = int(total_steps * warmup_fraction) if schedule == "onecycle" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _main_decides(accelerator: Accelerator, decide):
    """Run `decide()` on the main process and share its answer (or its UsageError) with every process,
    so all ranks stop together instead of some waiting forever in a collective."""
    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", decide())
        except UsageError as err:
            box[0] = ("error", (err.what, err.fix))
    if accelerator.num_processes > 1:
        broadcast_object_list(box)
    kind, value = box[0]
    if kind == "error":
        raise UsageError(*value)
    return value


def _make_run_dir(cfg: Config, config_name: str) -> str:
    name = cfg.run.name or f"{config_name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.run.dir or Path("runs") / name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"run folder {str(run_dir)!r} already exists and is not empty",
                         "choose another run.dir or run.name, or delete the old folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create run folder {str(run_dir)!r}: {err.strerror}", "choose a writable run.dir") from None
    return str(run_dir.resolve())


def make_accelerator() -> Accelerator:
    # split_batches: loaders yield *global* batches and each process takes its slice, so the number of
    # steps per epoch and the LR schedule are the same for any number of processes.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # `accelerate launch --multi_gpu` on a machine without GPUs would start independent single-process
    # runs; asking for the CPU makes them one data-parallel job over gloo instead.
    cpu = world > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, dataloader_config=DataLoaderConfiguration(split_batches=True))
    if accelerator.num_processes != world:
        raise UsageError(f"launched {world} processes but Accelerate formed a group of {accelerator.num_processes}",
                         "check the accelerate launch flags (--multi_gpu, --num_processes, --num_machines)")
    return accelerator


def average_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average BatchNorm running statistics over processes.

    Each process updates them from its own slice of the batch (DDP only copies rank 0's at the start of
    each forward), so without this every rank would evaluate a slightly different model, and the saved
    weights would not be the ones that scored half the test set.
    """
    if accelerator.num_processes == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(accelerator.reduce(buffer.detach().clone(), reduction="mean"))


def _check_world(cfg: Config, world: int) -> None:
    for key in ("global_batch_size", "eval_batch_size"):
        size = getattr(cfg.train, key)
        if size % world:
            raise UsageError(f"train.{key}={size} does not split over {world} processes",
                             f"use a multiple of {world}")


def _environment(accelerator: Accelerator) -> dict[str, Any]:
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "world_size": accelerator.num_processes,
        "device": f"{device.type} ({name})",
        "mixed_precision": accelerator.mixed_precision,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "accelerate": accelerate.__version__},
    }


def train(cfg: Config, config_name: str = "default") -> dict[str, Any]:
    """Train, select on val, score test once; returns the results written to results.json."""
    started = time.perf_counter()
    accelerator = make_accelerator()
    _check_world(cfg, accelerator.num_processes)
    run_dir = Path(_main_decides(accelerator, lambda: _make_run_dir(cfg, config_name)))
    accelerator.print(f"mnist-sum: run folder {run_dir}")
    if accelerator.is_main_process:
        write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    set_seed(cfg.train.seed)  # same initial weights on every process

    # ---- data: decoded once on the main process first (it may download or build a cache)
    with accelerator.main_process_first():
        splits = load_splits(cfg)
    train_set, val_set, test_set = make_datasets(cfg, splits)
    steps_per_epoch = len(train_set) // cfg.train.global_batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_set)} training images make no batch of {cfg.train.global_batch_size}",
                         "lower train.global_batch_size or raise data.train_limit")
    total_steps = steps_per_epoch * cfg.train.epochs
    workers = cfg.data.num_workers
    train_loader = make_loader(train_set, cfg.train.global_batch_size, cfg.train.seed, True, workers)
    val_loader = make_loader(val_set, cfg.train.eval_batch_size, cfg.train.seed, False, workers)
    test_loader = make_loader(test_set, cfg.train.eval_batch_size, cfg.train.seed, False, workers)

    # ---- model, optimizer, schedule
    model = build_model(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.optim.schedule, cfg.optim.warmup_fraction)
    )
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader, scheduler
    )
    net = accelerator.unwrap_model(model)
    tracker = Tracker(accelerator, run_dir)
    accelerator.print(
        f"mnist-sum: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test images, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision {accelerator.mixed_precision}, "
        f"{cfg.train.epochs} epochs x {steps_per_epoch} steps of {cfg.train.global_batch_size}"
    )

    # ---- the loop
    step = 0
    best_val: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] = {}
    train_started = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        set_epoch(train_loader, epoch)
        model.train()
        window = _Window(accelerator.device)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   disable=not accelerator.is_main_process)
        for batch in bar:
            digit_logits, sum_logits = model(batch["image"], batch["number"])
            loss, digit_ce, sum_ce = sum_loss(digit_logits, sum_logits, batch["label"], batch["number"],
                                              cfg.optim.label_smoothing)
            accelerator.backward(loss)
            if cfg.optim.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window.add(digit_logits, sum_logits, batch, digit_ce, sum_ce)
            if step % cfg.train.log_every == 0 or step % steps_per_epoch == 0:
                logged = window.flush(accelerator)
                logged.update({"train/lr": scheduler.get_last_lr()[0], "epoch": step / steps_per_epoch})
                tracker.log(logged, step)
                bar.set_postfix(loss=f"{logged['train/loss']:.4f}")

        # ---- validate; keep the best weights in memory (model selection on val only)
        average_buffers(net, accelerator)
        val = metrics(predict(net, val_loader, accelerator))
        tracker.log({f"val/{k}": v for k, v in val.items()} | {"epoch": epoch + 1}, step)
        better = not best_val or (val["joint_acc"], -val["loss"]) > (best_val["joint_acc"], -best_val["loss"])
        if better:
            best_val = {**val, "epoch": epoch + 1, "step": step}
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        accelerator.print(
            f"epoch {epoch + 1}/{cfg.train.epochs}: val digit {val['digit_acc']:.2%} sum {val['sum_acc']:.2%} "
            f"loss {val['loss']:.4f}{'  (best)' if better else ''}  [{time.perf_counter() - train_started:.0f}s]"
        )
    train_time = time.perf_counter() - train_started

    # ---- test, once, on the best-val weights
    net.load_state_dict(best_state)
    rows = predict(net, test_loader, accelerator, exhaustive=True)
    test = metrics(rows)
    tracker.log({f"test/{k}": v for k, v in test.items()}, step)
    results = {
        "config": config_name,
        "test": test,
        "best_val": best_val,
        "steps": step,
        "epochs": cfg.train.epochs,
        "global_batch_size": cfg.train.global_batch_size,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        **_environment(accelerator),
    }
    if accelerator.is_main_process:
        save_weights(run_dir / "model.safetensors", net, cfg.model)
        save_predictions(run_dir / "test_predictions.csv", rows)
        write_json(run_dir / "results.json", results)
    accelerator.print(
        f"test: digit {test['digit_acc']:.2%}  sum {test['sum_acc']:.2%}  joint {test['joint_acc']:.2%}  "
        f"exhaustive sum {test['exhaustive_sum_acc']:.2%}  ({test['num_samples']} images, "
        f"{results['wall_time_s']:.0f}s)\nmnist-sum: results in {run_dir / 'results.json'}"
    )
    tracker.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


class _Window:
    """Train metrics summed since the last log line, kept on the device so logging costs no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(5, device=device, dtype=torch.float64)  # digit CE, sum CE, digit ok, sum ok, n
        self.started = time.perf_counter()

    def add(self, digit_logits, sum_logits, batch, digit_ce, sum_ce) -> None:
        n = len(batch["label"])
        digit_ok = (digit_logits.argmax(-1) == batch["label"]).sum()
        sum_ok = (sum_logits.argmax(-1) == batch["label"] + batch["number"]).sum()
        self.sums += torch.stack([digit_ce.detach() * n, sum_ce.detach() * n, digit_ok, sum_ok,
                                  torch.tensor(n, device=self.sums.device)]).double()

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        digit_ce, sum_ce, digit_ok, sum_ok, n = accelerator.reduce(self.sums, reduction="sum").tolist()
        elapsed = time.perf_counter() - self.started
        self.sums.zero_()
        self.started = time.perf_counter()
        return {
            "train/loss": (digit_ce + sum_ce) / (2 * n),
            "train/digit_loss": digit_ce / n,
            "train/sum_loss": sum_ce / n,
            "train/digit_acc": digit_ok / n,
            "train/sum_acc": sum_ok / n,
            "train/samples_per_s": n / elapsed,
        }

