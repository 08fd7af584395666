"""The training loop, readable top to bottom: `train()` is the recipe, `Trainer` holds the parts it calls.

set up (Accelerator, data, model, run folder, resume) -> for each epoch: train its steps, validate and keep
the weights val selects (mnist_sum.train.selection), checkpoint -> score the test split once, on those weights, and
write the outputs.
Every way out, success or not, goes through one exit path that closes the trackers, restores the signal
handlers and ends the Accelerator's run.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from mnist_sum.config import Config
from mnist_sum.distributed.accelerator import make_accelerator, use_deterministic_algorithms
from mnist_sum.distributed.launch_flags import read_launch_flags
from mnist_sum.distributed.peers import peers_watched
from mnist_sum.distributed.ranks import check_world
from mnist_sum.distributed.signals import StopRequest
from mnist_sum.errors import Stopped
from mnist_sum.files import write_json
from mnist_sum.model.flops import count_flops
from mnist_sum.model.layers import sum_running_stats
from mnist_sum.model.scoring import Predictions, digit_confusion, gather_predictions, metrics, wrong_samples
from mnist_sum.model.weights import WEIGHTS, save_predictions, save_weights
from mnist_sum.tracking.plots import PlotWriter
from mnist_sum.tracking.trackers import Tracker, tracker_names
from mnist_sum.train.checkpoint import Checkpointer, CheckpointPolicy
from mnist_sum.train.clock import RunClock
from mnist_sum.train.parts import build_data, build_model_and_optimizer, open_run_folder, start_state
from mnist_sum.train.results import Results, git_state, results_record
from mnist_sum.train.selection import later_replaces
from mnist_sum.train.step import StepOutput, train_step
from mnist_sum.train.window import TrainLog


def train(cfg: Config, config_name: str = "default", resume: str | None = None) -> Results:
    """Train, select on val, score test once; returns the results written to results.json.

    `resume`: None (a new run folder), "auto" (the newest whole checkpoint of the run folder, if any) or
    the path of a step_* folder. SIGTERM/SIGINT saves a checkpoint and raises `Stopped`."""
    clock = RunClock(time.perf_counter())
    cfg, launch_flags = read_launch_flags(cfg)
    accelerator = make_accelerator(log_with=tracker_names(cfg), timeout_s=cfg.train.dist_timeout_s,
                                   cpu_threads=cfg.train.cpu_threads)
    # Outermost: a lost peer becomes one line after the trainer's clean-up.
    with peers_watched(accelerator), Trainer(cfg, config_name, resume, accelerator, clock, launch_flags) as trainer:
        while trainer.state.epoch < cfg.train.epochs:
            trainer.train_epoch()
            trainer.validate_and_select()
            trainer.end_epoch()
        trainer.end_loop()
        test, preds = trainer.test()
        results = trainer.write_outputs(test, preds)
        accelerator.wait_for_everyone()
    return results


def _progress_bar(main: bool) -> dict[str, Any]:
    """tqdm's `disable`: the main process draws a bar on a terminal only (None: tqdm asks whether stderr is
    one), so logs and Slurm files hold lines, not carriage returns; TQDM_DISABLE, when set, decides instead
    (tqdm reads it only for arguments not passed)."""
    if not main:
        return {"disable": True}
    return {} if "TQDM_DISABLE" in os.environ else {"disable": None}


class Trainer:
    """One run's parts, built in order, each by a function of mnist_sum.train.parts: data, the model and its optimizer,
    the run folder, the tracker and the train log, the checkpointer, the loop state (resumed or fresh), the stop
    request. A context manager: leaving it (whatever the way out) undoes what was set up, in reverse order."""

    def __init__(self, cfg: Config, config_name: str, resume: str | None, accelerator: Accelerator,
                 clock: RunClock, launch_flags: dict[str, Any] | None = None) -> None:
        self.cfg, self.accelerator, self.clock = cfg, accelerator, clock
        self.launch_flags = launch_flags or {}
        # Each part's clean-up is registered where the part is made; if a later part fails, the earlier ones
        # are undone at once; once all are made, `__exit__` undoes them.
        with ExitStack() as on_exit:
            # Registered first, so undone last: after an error, a signal during the other clean-ups (the launcher's
            # SIGTERM once a peer died) is only noted, and the process lives to print its one line.
            self.stop = StopRequest(accelerator)
            on_exit.callback(self.stop.restore)
            on_exit.callback(accelerator.end_training)
            check_world(cfg, accelerator.num_processes)
            if cfg.train.deterministic:
                use_deterministic_algorithms()
            # Before the data and the model: the helper imports matplotlib meanwhile (mnist_sum.tracking.plots says why).
            self.plots = on_exit.enter_context(PlotWriter(enabled=accelerator.is_main_process))
            self.data = build_data(cfg, accelerator)
            self.model = build_model_and_optimizer(cfg, accelerator, self.data.steps_per_epoch * cfg.train.epochs)
            opened = open_run_folder(cfg, config_name, resume, accelerator, self.model.num_params)
            self.run_dir, self.resumed_from = opened.dir, opened.checkpoint.name if opened.checkpoint else None
            self.tracker = on_exit.enter_context(Tracker(accelerator, self.run_dir))
            self.train_log = TrainLog(accelerator, self.tracker, self.model.scheduler, self.data.steps_per_epoch)
            self.checkpointer = Checkpointer(
                cfg.checkpoint, CheckpointPolicy(cfg.checkpoint, cfg.train.epochs, self.data.steps_per_epoch),
                accelerator, self.run_dir, self.model.network, self.model.average, self.train_log, clock)
            self.state, self.best_weights = start_state(cfg, config_name, opened, accelerator, self.checkpointer)
            self.git = git_state()  # once: W&B and results.json record the same answer
            self.state.wandb_run_id = self.tracker.start(cfg, cfg.to_dict() | {"git": self.git}, self.run_dir.name,
                                                         self.state.wandb_run_id, self.state.step)
            self.stop.install()
            self._on_exit = on_exit.pop_all()
        data = self.data
        accelerator.print(
            f"mnist-sum: {len(data.train_set)} train / {len(data.val_set)} val / {len(data.test_set)} test images, "
            f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision "
            f"{accelerator.mixed_precision}, {cfg.train.epochs} epochs x {data.steps_per_epoch} steps of "
            f"{cfg.train.global_batch_size}"
            + (f" in {cfg.train.micro_batches} micro-batches" if cfg.train.micro_batches > 1 else "")
            + (f"; accelerate launch flags: {', '.join(f'{k}={v}' for k, v in self.launch_flags.items())}"
               if self.launch_flags else ""))
        clock.trained_before = self.state.train_time_s  # earlier sessions of this run
        clock.mark("train")

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        return self._on_exit.__exit__(*exc_info)

    def train_epoch(self) -> None:
        """Train the current epoch's remaining steps; a stop request checkpoints and raises `Stopped`.

        Between log steps nothing is read back from the device: the window sums the metrics there, and the stop
        request (a collective and a host read) is asked only when a line is logged, every `train.log_every` steps
        and at the epoch's end."""
        cfg, state, data = self.cfg, self.state, self.data
        data.train_batches.set_epoch(state.epoch)
        self.model.prepared.train()
        self.train_log.start_epoch()
        # A resumed epoch skips the batches already trained on; the order itself is a function of (seed, epoch).
        batches = data.train_batches.batches(start=state.batches_done)
        with tqdm(batches, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}", leave=False, initial=state.batches_done,
                  total=data.steps_per_epoch, **_progress_bar(self.accelerator.is_main_process)) as bar:
            for batch in bar:
                out = self._train_step(batch)
                state.step += 1
                state.batches_done += 1
                self.train_log.add(out, state, batch)
                stop = False
                if state.step % cfg.train.log_every == 0 or state.batches_done == data.steps_per_epoch:
                    bar.set_postfix(loss=f"{self.train_log.flush(state)['train/loss']:.4f}")
                    # Where the processes meet anyway, and where a stop may checkpoint: an interrupted run and an
                    # uninterrupted one sum the BatchNorm shares at the same steps (mnist_sum.model.layers).
                    sum_running_stats(self.model.network)
                    stop = self.stop.agreed()
                checkpoint = self.checkpointer.after_step(state, self.best_weights, stop_requested=stop)
                if stop:
                    raise Stopped(state.step, checkpoint, self.run_dir, self.stop.signum or signal.SIGTERM)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """`train_step`; the run's first step also counts the model's FLOPs per sample."""
        def step() -> StepOutput:
            model = self.model
            return train_step(model.prepared, batch, model.optimizer, model.scheduler, self.accelerator, self.cfg,
                              model.average)

        if self.state.flops_per_sample:
            return step()
        out, flops = count_flops(step)
        self.state.flops_per_sample = flops / len(batch["label"])  # this process's slice of the global batch
        return out

    def validate_and_select(self) -> None:
        """Score the val split with the weights the run keeps (their moving average, with `train.ema_decay`), and
        keep them (in memory) unless the weights kept so far are better beyond val's noise (mnist_sum.train.selection:
        a later epoch, trained longer at a lower learning rate, wins a near tie).

        Selection is on accuracy, what the run is for, not on val loss: with label smoothing the net is
        trained to be unsure, and its plain cross-entropy on val stops falling while its accuracy still
        rises (docs/results.md: Which weights a run keeps)."""
        state, accelerator, network, average = self.state, self.accelerator, self.model.network, self.model.average
        sum_running_stats(network)
        candidate = average.module_for_eval(network) if average else network
        # Exhaustive too (each val image with every number; the sum head only, ten times): val's own measure of
        # whether the net adds, which 5,000 (image, number) pairs alone hardly test. One view of each image, also
        # where test reads several (model.test_shifts): the views do not change which epoch is better, and nine
        # of them every epoch cost about half as many FLOPs again as training (docs/results.md: Test-time shifts).
        preds = gather_predictions(candidate, self.data.val_batches, accelerator, exhaustive=True, shifts=0)
        val = metrics(preds)
        logged = {f"val/{k}": v for k, v in val.items()}
        if average:  # what averaging buys, on the chart beside it
            live = metrics(gather_predictions(network, self.data.val_batches, accelerator, shifts=0))
            logged |= {f"val_live/{k}": live[k] for k in ("digit_acc", "sum_acc", "joint_acc", "loss")}
        self.tracker.log(logged | {"epoch": state.epoch + 1, "train/elapsed_s": self.clock.train_time()}, state.step)
        self.tracker.log_examples(preds, self.data.val_set.images, "val", self.cfg.wandb.num_examples, state.step)
        wrong = wrong_samples(preds)
        kept = not state.best_val or later_replaces(state.kept_wrong, wrong, self.cfg.train.select_z)
        if kept:
            state.best_val, state.kept_wrong = {**val, "epoch": state.epoch + 1, "step": state.step}, wrong
            self.best_weights = {k: v.detach().clone() for k, v in candidate.state_dict().items()}
        accelerator.print(
            f"epoch {state.epoch + 1}/{self.cfg.train.epochs}: val digit {val['digit_acc']:.2%} sum {val['sum_acc']:.2%} "
            f"loss {val['loss']:.4f}{'  (kept)' if kept else ''}  [{time.perf_counter() - self.clock.marks['train']:.0f}s]")

    def end_epoch(self) -> None:
        self.state.epoch, self.state.batches_done = self.state.epoch + 1, 0
        self.checkpointer.after_epoch(self.state, self.best_weights)

    def end_loop(self) -> None:
        """Training is over: its time is fixed, and a signal ends the run as usual (nothing left to checkpoint)."""
        self.stop.restore()
        self.clock.mark("test")
        self.state.train_time_s = self.clock.train_time()

    def test(self) -> tuple[dict[str, Any], Predictions]:
        """Score the test split, once, on the kept weights."""
        self.model.network.load_state_dict(self.best_weights)
        preds = gather_predictions(self.model.network, self.data.test_batches, self.accelerator, exhaustive=True)
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
            save_weights(run_dir / WEIGHTS, self.model.network, self.cfg.model)
            save_predictions(run_dir / "test_predictions.csv", preds)
            self.plots.write(run_dir, digit_confusion(preds))
        results = results_record(self.cfg, self.state, test, self.clock, self.resumed_from, self.git, self.accelerator,
                                 self.launch_flags)
        self.tracker.summary({k: results[k] for k in ("train_flops", "train_flops_per_s", "flops_per_sample")})
        if self.accelerator.is_main_process:
            write_json(run_dir / "results.json", results)
            self.tracker.log_model(test)
        self.accelerator.print(
            f"test: digit {test['digit_acc']:.2%}  sum {test['sum_acc']:.2%}  joint {test['joint_acc']:.2%}  "
            f"exhaustive sum {test['exhaustive_sum_acc']:.2%}  ({test['num_samples']} images, "
            f"{results['wall_time_s']:.0f}s)\nmnist-sum: results in {run_dir / 'results.json'}")
        return results
