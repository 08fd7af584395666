"""The training loop, readable top to bottom: `train()` is the recipe, `Trainer` holds the parts it calls.

set up (Accelerator, data, model, run folder, resume) -> for each epoch: train its steps, validate and keep
the best-val weights, checkpoint -> score the test split once, on those weights, and write the outputs.
Every way out, success or not, goes through one exit path that closes the trackers, restores the signal
handlers and ends the Accelerator's run.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mnist_sum.accelerator import make_accelerator, use_deterministic_algorithms
from mnist_sum.batches import EvalBatches, TrainBatches
from mnist_sum.checkpoint import Checkpointer, CheckpointPolicy
from mnist_sum.clock import RunClock
from mnist_sum.config import Config
from mnist_sum.data import load_splits, make_datasets
from mnist_sum.errors import Stopped, UsageError
from mnist_sum.files import write_json, write_text
from mnist_sum.flops import count_flops
from mnist_sum.model import build_model
from mnist_sum.outputs import save_predictions, save_weights
from mnist_sum.peers import peers_watched
from mnist_sum.plots import write_plots
from mnist_sum.ranks import check_world, main_decides, same_buffers
from mnist_sum.results import Results, git_state, results_record
from mnist_sum.runs import open_run
from mnist_sum.schedule import make_optimizer
from mnist_sum.scoring import Predictions, gather_predictions, metrics
from mnist_sum.signals import StopRequest
from mnist_sum.state import LoopState
from mnist_sum.step import StepOutput, train_step
from mnist_sum.tracking import Tracker, tracker_names
from mnist_sum.window import TrainMetricsWindow


def train(cfg: Config, config_name: str = "default", resume: str | None = None) -> Results:
    """Train, select on val, score test once; returns the results written to results.json.

    `resume`: None (a new run folder), "auto" (the newest whole checkpoint of the run folder, if any) or
    the path of a step_* folder. SIGTERM/SIGINT saves a checkpoint and raises `Stopped`."""
    started = time.perf_counter()
    accelerator = make_accelerator(log_with=tracker_names(cfg), timeout_s=cfg.train.dist_timeout_s,
                                   cpu_threads=cfg.train.cpu_threads)
    with ExitStack() as on_exit:  # the one exit path: leaving it undoes the set-up in reverse order
        on_exit.enter_context(peers_watched(accelerator))  # outermost: a lost peer becomes one line after the clean-up
        on_exit.callback(accelerator.end_training)
        trainer = Trainer(cfg, config_name, resume, accelerator, on_exit, started)
        while trainer.state.epoch < cfg.train.epochs:
            trainer.train_epoch()
            trainer.validate_and_select()
            trainer.end_epoch()
        trainer.end_loop()
        test, preds = trainer.test()
        results = trainer.write_outputs(test, preds)
        accelerator.wait_for_everyone()
        return results


class Trainer:
    """One run's parts: the Accelerator, data, model and optimizer, the loop state, the tracker, the stop
    request and the checkpoint policy. Built by `train()`, which registers their clean-up in `on_exit`."""

    def __init__(self, cfg: Config, config_name: str, resume: str | None, accelerator: Accelerator,
                 on_exit: ExitStack, started: float) -> None:
        self.cfg, self.accelerator = cfg, accelerator
        self.clock = RunClock(started)
        check_world(cfg, accelerator.num_processes)
        if cfg.train.deterministic:
            use_deterministic_algorithms()
        self._load_data()

        set_seed(cfg.train.seed)  # the same initial weights on every process
        self.model = build_model(cfg.model)  # the plain network: evaluation, BN averaging, saved weights
        optimizer, scheduler = make_optimizer(self.model, cfg.optim, self.steps_per_epoch * cfg.train.epochs)
        # The run folder is made only now that data and recipe are known to work (no half-made folders).
        num_params = sum(p.numel() for p in self.model.parameters())
        opened = main_decides(accelerator, lambda: open_run(cfg, config_name, resume,
                                                            space_for=(num_params, cfg.checkpoint.keep_last)))
        self.run_dir = opened.dir
        self.resumed_from = opened.checkpoint.name if opened.checkpoint else None
        accelerator.print(f"mnist-sum: run folder {self.run_dir}"
                          + (f", resuming from {opened.checkpoint.name}" if opened.checkpoint else ""))
        if accelerator.is_main_process:
            write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

        # `ddp_model` is what the steps train: the same network, wrapped for data parallelism when there
        # are several processes. The data is not prepared: mnist_sum.batches divides it (and says why).
        self.ddp_model, self.optimizer, self.scheduler = accelerator.prepare(self.model, optimizer, scheduler)
        self.model = accelerator.unwrap_model(self.ddp_model)
        if cfg.train.compile:  # the steps run the compiled module; checkpoints and evaluation the plain one
            self.ddp_model = torch.compile(self.ddp_model)
        self.tracker = on_exit.enter_context(Tracker(accelerator, self.run_dir))
        self.window = TrainMetricsWindow(accelerator.device)
        self.checkpointer = Checkpointer(cfg.checkpoint, accelerator, self.run_dir,
                                         CheckpointPolicy(cfg.checkpoint, cfg.train.epochs, self.steps_per_epoch),
                                         self.model, self.tracker, self._log_pending_window, self.clock.train_time)
        self.state, self.best_weights = self._resume(opened.checkpoint, opened.state, config_name)

        self.git = git_state()  # once: W&B and results.json record the same answer
        self.state.wandb_run_id = self.tracker.start(cfg, cfg.to_dict() | {"git": self.git}, self.run_dir.name,
                                                     self.state.wandb_run_id, self.state.step)
        self.stop = on_exit.enter_context(StopRequest(accelerator))
        accelerator.print(
            f"mnist-sum: {len(self.train_set)} train / {len(self.val_set)} val / {len(self.test_set)} test images, "
            f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision "
            f"{accelerator.mixed_precision}, {cfg.train.epochs} epochs x {self.steps_per_epoch} steps of "
            f"{cfg.train.global_batch_size}")
        self.clock.trained_before = self.state.train_time_s  # earlier sessions of this run
        self.clock.mark("train")

    def _load_data(self) -> None:
        """The three splits, decoded once on the main process first (it may download or build a cache), then kept
        on the training device (MNIST is 55 MB), and each process's part of them."""
        cfg, accelerator = self.cfg, self.accelerator
        with accelerator.main_process_first():
            splits = load_splits(cfg)
        self.train_set, self.val_set, self.test_set = (d.to(accelerator.device) for d in make_datasets(cfg, splits))
        rank, world = accelerator.process_index, accelerator.num_processes
        self.train_batches = TrainBatches(self.train_set, cfg.train.global_batch_size, cfg.train.seed, rank, world)
        self.steps_per_epoch = len(self.train_batches)
        if self.steps_per_epoch == 0:
            raise UsageError(f"{len(self.train_set)} training images make no batch of {cfg.train.global_batch_size}",
                             "lower train.global_batch_size or raise data.train_limit")
        self.val_batches = EvalBatches(self.val_set, cfg.train.eval_batch_size, rank, world)
        self.test_batches = EvalBatches(self.test_set, cfg.train.eval_batch_size, rank, world)

    def _resume(self, checkpoint: Path | None, state: LoopState | None,
                config_name: str) -> tuple[LoopState, dict[str, torch.Tensor]]:
        """(loop state, best-val weights so far) to start from: fresh ones, or the checkpoint's, with everything
        it saved loaded."""
        world = self.accelerator.num_processes
        if checkpoint is None or state is None:
            return LoopState(config=self.cfg.to_dict(), config_name=config_name, world_size=world), {}
        best_weights = self.checkpointer.load(checkpoint)
        if state.world_size != world:
            self.accelerator.print(
                f"mnist-sum: note: the checkpoint was written by {state.world_size} process(es); the run continues "
                "with the same global batches and the same function, but sums are reduced in another order, so it "
                "matches an uninterrupted run up to float rounding, not bit for bit")
        state.config, state.world_size = self.cfg.to_dict(), world  # as the next checkpoint will record them
        return state, best_weights

    def train_epoch(self) -> None:
        """Train the current epoch's remaining steps; a stop request checkpoints and raises `Stopped`.

        Between log steps nothing is read back from the device: the window sums the metrics there, and the stop
        request (a collective and a host read) is asked only when a line is logged, every `train.log_every` steps
        and at the epoch's end."""
        cfg, state = self.cfg, self.state
        self.train_batches.set_epoch(state.epoch)
        self.ddp_model.train()
        self.window = TrainMetricsWindow(self.accelerator.device)
        # A resumed epoch skips the batches already trained on; the order itself is a function of (seed, epoch).
        batches = self.train_batches.batches(start=state.batches_done)
        with tqdm(batches, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}", leave=False, initial=state.batches_done,
                  total=self.steps_per_epoch, disable=not self.accelerator.is_main_process) as bar:
            for batch in bar:
                out = self._train_step(batch)
                state.step += 1
                state.batches_done += 1
                self.window.add(out, state.step, batch["label"], batch["number"])
                stop = False
                if state.step % cfg.train.log_every == 0 or state.batches_done == self.steps_per_epoch:
                    bar.set_postfix(loss=f"{self._log_train_window()['train/loss']:.4f}")
                    stop = self.stop.agreed()
                checkpoint = self.checkpointer.after_step(state, self.best_weights, stop_requested=stop)
                if stop:
                    raise Stopped(state.step, checkpoint, self.run_dir, self.stop.signum or signal.SIGTERM)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """`train_step`; the run's first step also counts the model's FLOPs per sample."""
        def step() -> StepOutput:
            return train_step(self.ddp_model, batch, self.optimizer, self.scheduler, self.accelerator, self.cfg)

        if self.state.flops_per_sample:
            return step()
        out, flops = count_flops(step)
        self.state.flops_per_sample = flops / len(batch["label"])  # this process's slice of the global batch
        return out

    def _log_pending_window(self) -> None:
        """Log the partial window before a checkpoint, so the resumed run's log has no gap."""
        if self.window.pending:
            self._log_train_window()

    def _log_train_window(self) -> dict[str, float]:
        logged = self.window.flush(self.accelerator, self.scheduler.get_last_lr()[0],
                                   self.state.step / self.steps_per_epoch)
        self.state.skipped_steps += logged.get("train/skipped_steps", 0)
        self.tracker.log(logged, self.state.step)
        return logged

    def validate_and_select(self) -> None:
        """Score the val split; keep these weights (in memory) if both heads are right on at least as many val
        samples as ever before (a tie goes to the later epoch, trained longer at a lower learning rate).

        Selection is on accuracy, what the run is for, not on val loss: with label smoothing the net is
        trained to be unsure, and its plain cross-entropy on val stops falling while its accuracy still
        rises (measured: the lowest val loss at epoch 7 of 12, 99.48% against 99.60% at epoch 11)."""
        state, accelerator = self.state, self.accelerator
        same_buffers(self.model, accelerator)
        # Exhaustive too (each val image with every number; the sum head only, ten times): val's own measure of
        # whether the net adds, which 5,000 (image, number) pairs alone hardly test.
        preds = gather_predictions(self.model, self.val_batches, accelerator, exhaustive=True)
        val = metrics(preds)
        self.tracker.log({f"val/{k}": v for k, v in val.items()}
                         | {"epoch": state.epoch + 1, "train/elapsed_s": self.clock.train_time()}, state.step)
        self.tracker.log_examples(preds, self.val_set.images, "val", self.cfg.wandb.num_examples, state.step)
        better = not state.best_val or val["joint_acc"] >= state.best_val["joint_acc"]
        if better:
            state.best_val = {**val, "epoch": state.epoch + 1, "step": state.step}
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        accelerator.print(
            f"epoch {state.epoch + 1}/{self.cfg.train.epochs}: val digit {val['digit_acc']:.2%} sum {val['sum_acc']:.2%} "
            f"loss {val['loss']:.4f}{'  (best)' if better else ''}  [{time.perf_counter() - self.clock.marks['train']:.0f}s]")

    def end_epoch(self) -> None:
        self.state.epoch, self.state.batches_done = self.state.epoch + 1, 0
        self.checkpointer.after_epoch(self.state, self.best_weights)

    def end_loop(self) -> None:
        """Training is over: its time is fixed, and a signal ends the run as usual (nothing left to checkpoint)."""
        self.stop.restore()
        self.clock.mark("test")
        self.state.train_time_s = self.clock.train_time()

    def test(self) -> tuple[dict[str, Any], Predictions]:
        """Score the test split, once, on the selected (best-val) weights."""
        self.model.load_state_dict(self.best_weights)
        preds = gather_predictions(self.model, self.test_batches, self.accelerator, exhaustive=True)
        test = metrics(preds)
        self.tracker.log({f"test/{k}": v for k, v in test.items()}, self.state.step)
        self.tracker.summary({f"test/{k}": v for k, v in test.items()})
        return test, preds

    def write_outputs(self, test: dict[str, Any], preds: Predictions) -> Results:
        """model.safetensors, test_predictions.csv, the plots and, last, results.json (main process); returns the
        results."""
        run_dir = self.run_dir
        self.clock.mark("outputs")
        if self.accelerator.is_main_process:
            save_weights(run_dir / "model.safetensors", self.model, self.cfg.model)
            save_predictions(run_dir / "test_predictions.csv", preds)
            write_plots(run_dir, preds)
        results = results_record(self.cfg, self.state, test, self.clock, self.resumed_from, self.git, self.accelerator)
        self.tracker.summary({k: results[k] for k in ("train_flops", "train_flops_per_s", "flops_per_sample")})
        if self.accelerator.is_main_process:
            write_json(run_dir / "results.json", results)
            self.tracker.log_model(test)
        self.accelerator.print(
            f"test: digit {test['digit_acc']:.2%}  sum {test['sum_acc']:.2%}  joint {test['joint_acc']:.2%}  "
            f"exhaustive sum {test['exhaustive_sum_acc']:.2%}  ({test['num_samples']} images, "
            f"{results['wall_time_s']:.0f}s)\nmnist-sum: results in {run_dir / 'results.json'}")
        return results
