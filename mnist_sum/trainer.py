"""The training loop, readable top to bottom.

setup (Accelerator, run folder, data, model, resume) -> for each epoch: train steps (forward, backward,
step, schedule, log, checkpoint) -> validate -> keep the best-val weights -> checkpoint; then score the
test split once, on those weights, and write the results.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import accelerate
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mnist_sum.augment import warp
from mnist_sum.checkpoint import load_best, save_checkpoint
from mnist_sum.config import Config
from mnist_sum.data import load_splits, make_datasets, make_loader, set_epoch
from mnist_sum.distributed import StopRequest, average_buffers, check_world, main_decides, make_accelerator
from mnist_sum.errors import Stopped, UsageError
from mnist_sum.evaluate import metrics, predict
from mnist_sum.files import write_json, write_text
from mnist_sum.model import build_model, sum_loss
from mnist_sum.outputs import save_predictions, save_weights
from mnist_sum.plots import write_plots
from mnist_sum.runs import open_run
from mnist_sum.tracking import Tracker, wandb_examples


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float) -> float:
    """Multiplier of the peak LR at `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return 1.0
    warmup = int(total_steps * warmup_fraction) if schedule == "onecycle" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _environment(accelerator: Accelerator) -> dict[str, Any]:
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "world_size": accelerator.num_processes,
        "device": f"{device.type} ({name})",
        "mixed_precision": accelerator.mixed_precision,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "accelerate": accelerate.__version__},
    }


def train(cfg: Config, config_name: str = "default", resume: str | None = None) -> dict[str, Any]:
    """Train, select on val, score test once; returns the results written to results.json.

    `resume`: None (a new run folder), "auto" (the newest whole checkpoint of the run folder, if any) or
    the path of a step_* folder. SIGTERM/SIGINT saves a checkpoint and raises `Stopped`."""
    started = time.perf_counter()
    accelerator = make_accelerator(log_with=None if cfg.wandb.mode == "disabled" else "wandb",
                                   timeout_s=cfg.train.dist_timeout_s, cpu_threads=cfg.train.cpu_threads)
    check_world(cfg, accelerator.num_processes)

    # ---- data: decoded once on the main process first (it may download or build a cache)
    with accelerator.main_process_first():
        splits = load_splits(cfg)
    train_set, val_set, test_set = make_datasets(cfg, splits)
    if accelerator.device.type != "cpu" and cfg.data.num_workers == 0:  # workers could not share device tensors
        for dataset in (train_set, val_set, test_set):
            dataset.to(accelerator.device)
    steps_per_epoch = len(train_set) // cfg.train.global_batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_set)} training images make no batch of {cfg.train.global_batch_size}",
                         "lower train.global_batch_size or raise data.train_limit")
    total_steps = steps_per_epoch * cfg.train.epochs
    workers = cfg.data.num_workers
    train_loader = make_loader(train_set, cfg.train.global_batch_size, cfg.train.seed, True, workers)
    val_loader = make_loader(val_set, cfg.train.eval_batch_size, cfg.train.seed, False, workers)
    test_loader = make_loader(test_set, cfg.train.eval_batch_size, cfg.train.seed, False, workers)

    # ---- the run folder, made only now that data and recipe are known to work (no half-made folders)
    num_params = sum(p.numel() for p in build_model(cfg.model).parameters())
    run_dir, checkpoint = main_decides(
        accelerator, lambda: open_run(cfg, config_name, resume, space_for=(num_params, cfg.checkpoint.keep_last)))
    run_dir = Path(run_dir)
    accelerator.print(f"mnist-sum: run folder {run_dir}" + (f", resuming from {Path(checkpoint).name}" if checkpoint else ""))
    if accelerator.is_main_process:
        write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # ---- model, optimizer, schedule
    set_seed(cfg.train.seed)  # same initial weights on every process
    model = build_model(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.optim.schedule, cfg.optim.warmup_fraction)
    )
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader, scheduler
    )
    net = accelerator.unwrap_model(model)

    # ---- where the loop starts: fresh, or exactly where a checkpoint left off
    step, epoch, batches_done, best_val, best_state, meta = 0, 0, 0, {}, {}, {}
    if checkpoint:
        accelerator.load_state(checkpoint)  # model, optimizer, schedule, grad scaler, this process's RNG
        meta = json.loads((Path(checkpoint) / "meta.json").read_text())
        step, epoch, batches_done, best_val = meta["step"], meta["epoch"], meta["batches_done"], meta["best_val"]
        best_state = load_best(Path(checkpoint))
        if meta["world_size"] != accelerator.num_processes:
            accelerator.print(f"mnist-sum: note: the checkpoint was written by {meta['world_size']} process(es); the "
                              "global batches continue in the same order, but dropout draws differ, so the result is "
                              "not bit-identical to an uninterrupted run")
    tracker = Tracker(accelerator, run_dir)
    wandb_id = tracker.start_wandb(cfg.wandb, cfg.to_dict(), run_dir.name, meta.get("wandb_run_id"))
    stop = StopRequest(accelerator)
    elapsed_before = meta.get("train_time_s", 0.0)
    accelerator.print(
        f"mnist-sum: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test images, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision {accelerator.mixed_precision}, "
        f"{cfg.train.epochs} epochs x {steps_per_epoch} steps of {cfg.train.global_batch_size}"
    )

    train_started = time.perf_counter()

    def save(window: _Window, epoch_done: bool) -> Path:
        """Checkpoint the exact loop position: mid-epoch (batches_done of epoch) or after an epoch's validation."""
        if window.pending:  # log the partial window, so the resumed run's log has no gap
            tracker.log(window.flush(accelerator, scheduler, step, steps_per_epoch), step)
        if not all(torch.isfinite(t).all() for t in net.state_dict().values() if t.is_floating_point()):
            raise UsageError(f"training diverged: the weights became NaN or infinite by step {step}; no checkpoint holds them",
                             "lower optim.lr or set optim.grad_clip=1.0, then resume from an earlier checkpoint or restart")
        position = {"epoch": epoch + 1, "batches_done": 0} if epoch_done else {"epoch": epoch, "batches_done": batches_done}
        state = {**position, "best_val": best_val, "config": cfg.to_dict(), "config_name": config_name,
                 "world_size": accelerator.num_processes, "metrics_lines": tracker.lines, "wandb_run_id": wandb_id,
                 "train_time_s": elapsed_before + time.perf_counter() - train_started}
        return save_checkpoint(accelerator, run_dir, step, state, best_state, cfg.checkpoint.keep_last)

    # ---- the loop
    while epoch < cfg.train.epochs:
        set_epoch(train_loader, epoch)
        model.train()
        window = _Window(accelerator.device)
        # A resumed epoch skips the batches already trained on; the order itself is a function of (seed, epoch).
        batches = accelerator.skip_first_batches(train_loader, batches_done) if batches_done else train_loader
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, initial=batches_done,
                   total=steps_per_epoch, disable=not accelerator.is_main_process)
        for batch in bar:
            images = batch["image"]
            if cfg.augment.enabled:  # each sample's warp is a function of (seed, epoch, index), like its number
                images = warp(images, cfg.augment, cfg.train.seed, epoch, batch["index"])
            digit_logits, sum_logits = model(images, batch["number"])
            loss, digit_ce, sum_ce = sum_loss(digit_logits, sum_logits, batch["label"], batch["number"],
                                              cfg.optim.label_smoothing)
            accelerator.backward(loss)
            if cfg.optim.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batches_done += 1
            window.add(digit_logits, sum_logits, batch, digit_ce, sum_ce, step)
            if step % cfg.train.log_every == 0 or batches_done == steps_per_epoch:
                logged = window.flush(accelerator, scheduler, step, steps_per_epoch)
                tracker.log(logged, step)
                bar.set_postfix(loss=f"{logged['train/loss']:.4f}")
            if stop.agreed():
                bar.close()
                path = save(window, epoch_done=False)
                tracker.close()
                accelerator.end_training()
                raise Stopped(f"mnist-sum: stopped at step {step}, checkpoint {path.name} saved; continue with "
                              f"--resume auto run.dir={run_dir}", stop.exit_code())
            if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and batches_done < steps_per_epoch:
                save(window, epoch_done=False)
        bar.close()

        # ---- validate; keep the best weights in memory (model selection on val only)
        average_buffers(net, accelerator)
        val_rows = predict(net, val_loader, accelerator)
        val = metrics(val_rows)
        elapsed = elapsed_before + time.perf_counter() - train_started
        tracker.log({f"val/{k}": v for k, v in val.items()} | {"epoch": epoch + 1, "train/elapsed_s": elapsed}, step)
        if tracker.wandb is not None:
            tracker.log_wandb(wandb_examples(val_rows, val_set.images, "val", cfg.wandb.num_examples), step)
        # Select on val loss, the training objective: 5,000 val images hold only ~25 errors, so accuracy
        # moves in steps of 0.02% and ranks nearly equal epochs by chance; the loss is continuous.
        better = not best_val or val["loss"] < best_val["loss"]
        if better:
            best_val = {**val, "epoch": epoch + 1, "step": step}
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        accelerator.print(
            f"epoch {epoch + 1}/{cfg.train.epochs}: val digit {val['digit_acc']:.2%} sum {val['sum_acc']:.2%} "
            f"loss {val['loss']:.4f}{'  (best)' if better else ''}  [{time.perf_counter() - train_started:.0f}s]"
        )
        if cfg.checkpoint.every_epoch or epoch + 1 == cfg.train.epochs:
            save(window, epoch_done=True)  # the last epoch always: a crash during the test resumes straight into it
        epoch, batches_done = epoch + 1, 0
    stop.restore()
    train_time = elapsed_before + time.perf_counter() - train_started

    # ---- test, once, on the best-val weights
    net.load_state_dict(best_state)
    rows = predict(net, test_loader, accelerator, exhaustive=True)
    test = metrics(rows)
    tracker.log({f"test/{k}": v for k, v in test.items()}, step)
    tracker.summary({f"test/{k}": v for k, v in test.items()})
    results = {
        "config": meta.get("config_name", config_name),
        "test": test,
        "best_val": best_val,
        "steps": step,
        "epochs": cfg.train.epochs,
        "global_batch_size": cfg.train.global_batch_size,
        "resumed_from": Path(checkpoint).name if checkpoint else None,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        **_environment(accelerator),
    }
    if accelerator.is_main_process:
        save_weights(run_dir / "model.safetensors", net, cfg.model)
        save_predictions(run_dir / "test_predictions.csv", rows)
        write_plots(run_dir, rows)
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


NO_STEP = 2**62


class _Window:
    """Train metrics summed since the last log line, kept on the device so logging costs no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(5, device=device, dtype=torch.float64)  # digit CE, sum CE, digit ok, sum ok, n
        self.first_bad = torch.full((1,), NO_STEP, device=device)  # first step with a non-finite loss
        self.started = time.perf_counter()
        self.pending = False

    def add(self, digit_logits, sum_logits, batch, digit_ce, sum_ce, step: int) -> None:
        # Recorded on the device and checked at the next flush, so a healthy run pays no sync per step.
        bad = ~torch.isfinite(digit_ce + sum_ce)
        self.first_bad = torch.where(bad & (self.first_bad == NO_STEP), step, self.first_bad)
        n = len(batch["label"])
        digit_ok = (digit_logits.argmax(-1) == batch["label"]).sum()
        sum_ok = (sum_logits.argmax(-1) == batch["label"] + batch["number"]).sum()
        self.sums += torch.stack([digit_ce.detach() * n, sum_ce.detach() * n, digit_ok, sum_ok,
                                  torch.tensor(n, device=self.sums.device)]).double()
        self.pending = True

    def flush(self, accelerator: Accelerator, scheduler, step: int, steps_per_epoch: int) -> dict[str, float]:
        """The window's metrics over all processes. Every checkpoint is preceded by a flush, so a non-finite
        loss stops the run here, before any checkpoint could hold the weights it produced."""
        first_bad = int(accelerator.gather(self.first_bad).min())
        if first_bad != NO_STEP:
            raise UsageError(f"training diverged: the loss became NaN or infinite at step {first_bad}; the run stopped "
                             "there and no checkpoint holds weights from that step on",
                             "lower optim.lr or set optim.grad_clip=1.0, then resume from an earlier checkpoint or restart")
        digit_ce, sum_ce, digit_ok, sum_ok, n = accelerator.reduce(self.sums, reduction="sum").tolist()
        elapsed = time.perf_counter() - self.started
        self.sums.zero_()
        self.started = time.perf_counter()
        self.pending = False
        return {
            "train/loss": (digit_ce + sum_ce) / (2 * n),
            "train/digit_loss": digit_ce / n,
            "train/sum_loss": sum_ce / n,
            "train/digit_acc": digit_ok / n,
            "train/sum_acc": sum_ok / n,
            "train/samples_per_s": n / elapsed,
            "train/lr": scheduler.get_last_lr()[0],
            "epoch": step / steps_per_epoch,
        }
