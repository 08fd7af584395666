"""The training loop's parts, in process and in seconds: the LR schedule, the train metrics window, the loop
state and its meta.json, the checkpoint policy, the stop request on a real signal, the error types, and the
one exit path of a failing run."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import torch
import wandb
from accelerate import Accelerator
from conftest import launch
from wandb_records import read_records

from mnist_sum.config import CheckpointConfig, OptimConfig, load_config
from mnist_sum.distributed.accelerator import make_accelerator
from mnist_sum.distributed.signals import StopRequest
from mnist_sum.errors import DamagedCheckpoint, Diverged, LaunchError, LostPeer, ProjectError, Stopped, UsageError
from mnist_sum.train.checkpoint import CheckpointPolicy, _sha256, check_checkpoint, find_latest
from mnist_sum.train.schedule import lr_factor, make_optimizer
from mnist_sum.train.state import META, LoopState
from mnist_sum.train.step import StepOutput
from mnist_sum.train.trainer import train
from mnist_sum.train.window import TrainMetricsWindow


@pytest.fixture(scope="module")
def accelerator():
    return make_accelerator()  # one process on the CPU, as `python train.py` makes it


# ---- the LR schedule


def test_onecycle_warms_up_linearly_then_anneals_to_zero():
    total, fraction = 100, 0.2  # 20 warm-up steps
    factors = [lr_factor(s, total, "onecycle", fraction) for s in range(total + 1)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == 1.0  # the last warm-up step reaches the peak
    assert factors[20] == 1.0  # the anneal starts at the peak
    assert all(a < b for a, b in zip(factors[:20], factors[1:20]))
    assert all(a >= b for a, b in zip(factors[20:], factors[21:]))
    assert factors[59] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 80)))
    assert 0 < factors[99] < 1e-3 and factors[100] == 0.0  # the last step trains at a tiny LR; beyond it, zero
    assert lr_factor(10**6, total, "onecycle", fraction) == 0.0  # never negative, never rising again


@pytest.mark.parametrize("schedule, fraction, total", [("onecycle", 0.0, 50), ("onecycle", 0.2, 1), ("cosine", 0.5, 50)])
def test_schedules_without_warm_up_start_at_the_peak(schedule, fraction, total):
    # No warm-up steps (none asked for, too few steps for any, or cosine): no division by zero, step 0 at the peak.
    assert lr_factor(0, total, schedule, fraction) == 1.0
    assert lr_factor(total, total, schedule, fraction) == 0.0


def test_constant_schedule_and_the_optimizer_follow_the_config():
    assert {lr_factor(s, 10, "constant", 0.5) for s in range(12)} == {1.0}
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model, OptimConfig(lr=0.01, warmup_fraction=0.5), total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.01 * lr_factor(s, 10, "onecycle", 0.5) for s in range(10)])
    assert optimizer.param_groups[0]["weight_decay"] == OptimConfig().weight_decay


# ---- the train metrics window


def _step_output(digit_ce: float, sum_ce: float, digit_logits: torch.Tensor, sum_logits: torch.Tensor,
                 skipped: bool | None = None) -> StepOutput:
    n = len(digit_logits)  # per-sample losses, as train_step returns them
    return StepOutput(digit_logits, sum_logits, torch.full((n,), digit_ce), torch.full((n,), sum_ce),
                      None if skipped is None else torch.tensor(skipped))


def _batch(labels, numbers):
    return torch.tensor(labels), torch.tensor(numbers)


def test_window_averages_over_samples_and_starts_empty_again(accelerator):
    window = TrainMetricsWindow(accelerator.device)
    digits = torch.eye(10)[[1, 2]] * 5  # predicts 1, 2
    sums = torch.eye(19)[[4, 8]] * 5  # predicts 4, 8
    window.add(_step_output(1.0, 3.0, digits, sums), 1, *_batch([1, 7], [3, 2]))  # digits 1/2 right, sums 1/2
    window.add(_step_output(0.5, 0.5, digits[:1], sums[:1]), 2, *_batch([1], [3]))  # both right
    logged = window.flush(accelerator, lr=0.25, epoch=0.5)
    assert logged["train/digit_loss"] == pytest.approx((2 * 1.0 + 0.5) / 3)  # weighted by batch size
    assert logged["train/sum_loss"] == pytest.approx((2 * 3.0 + 0.5) / 3)
    assert logged["train/loss"] == pytest.approx((logged["train/digit_loss"] + logged["train/sum_loss"]) / 2)
    assert logged["train/digit_acc"] == pytest.approx(2 / 3) and logged["train/sum_acc"] == pytest.approx(2 / 3)
    assert logged["train/lr"] == 0.25 and logged["epoch"] == 0.5 and logged["train/samples_per_s"] > 0
    assert "train/skipped_steps" not in logged  # no grad scaler, nothing to skip
    assert not window.pending and window.sums.abs().sum() == 0


def test_window_counts_the_steps_an_fp16_grad_scaler_skipped(accelerator):
    window = TrainMetricsWindow(accelerator.device)
    logits = torch.zeros(1, 10), torch.zeros(1, 19)
    for step, skipped in enumerate([True, True, False, True, False], start=1):
        window.add(_step_output(1.0, 1.0, *logits, skipped=skipped), step, *_batch([0], [0]))
    assert window.flush(accelerator, lr=0.1, epoch=0.0)["train/skipped_steps"] == 3  # a skipped step is no divergence
    window.add(_step_output(1.0, 1.0, *logits, skipped=False), 6, *_batch([0], [0]))
    assert window.flush(accelerator, lr=0.1, epoch=0.0)["train/skipped_steps"] == 0  # counted per window


def test_window_names_the_first_step_whose_loss_was_not_finite(accelerator):
    window = TrainMetricsWindow(accelerator.device)
    logits = torch.zeros(1, 10), torch.zeros(1, 19)
    for step, loss in [(1, 1.0), (2, 1.0), (3, float("nan")), (4, float("inf")), (5, 1.0)]:
        window.add(_step_output(loss, 1.0, *logits), step, *_batch([0], [0]))
    with pytest.raises(Diverged) as info:
        window.flush(accelerator, lr=0.1, epoch=0.0)
    assert info.value.step == 3
    assert info.value.line().startswith("mnist-sum: error: training diverged: the loss became NaN or infinite at step 3;")
    assert info.value.exit_code == 2


# ---- the loop state and meta.json


def _state(**changes) -> LoopState:
    base = LoopState(config=load_config(None).to_dict(), config_name="quick", world_size=2, step=300, epoch=1,
                     batches_done=71, best_val={"loss": 0.05, "epoch": 1, "step": 229}, train_time_s=12.5,
                     wandb_run_id="abc12345", metrics_lines=9, flops_per_sample=7.1e6)
    return dataclasses.replace(base, **changes)


def _checkpoint_folder(tmp_path, state: LoopState):
    folder = tmp_path / f"step_{state.step:06d}"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\1" * 100)
    state.write(folder, {"weights.bin": _sha256(folder / "weights.bin")})
    return folder


def test_loop_state_round_trips_through_meta_json(tmp_path):
    state = _state()
    folder = _checkpoint_folder(tmp_path, state)
    assert check_checkpoint(folder) == state
    read, files = LoopState.read(folder)
    assert read == state and list(files) == ["weights.bin"]
    meta = json.loads((folder / META).read_text())  # plain, readable JSON
    assert meta["step"] == 300 and meta["epoch"] == 1 and meta["batches_done"] == 71 and "files" in meta
    assert find_latest(tmp_path) == (folder, state)


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / "weights.bin").write_bytes(b"\2" * 100), "weights.bin is damaged (checksum mismatch)"),
    (lambda f: (f / "weights.bin").unlink(), "weights.bin is missing"),
    (lambda f: (f / META).unlink(), "meta.json is missing"),
    (lambda f: (f / META).write_text("{half"), "meta.json is unreadable"),
    (lambda f: (f / META).write_text(json.dumps({"step": 1, "files": {}})), "meta.json is unreadable"),  # keys missing
    (lambda f: (f / META).write_text('{"files": [1]}'), "meta.json is unreadable"),
])
def test_a_damaged_checkpoint_says_what_is_wrong(tmp_path, damage, reason):
    folder = _checkpoint_folder(tmp_path, _state())
    damage(folder)
    with pytest.raises(DamagedCheckpoint) as info:
        check_checkpoint(folder)
    assert info.value.reason == reason and info.value.path == folder
    assert info.value.line() == (f"mnist-sum: error: checkpoint {folder} is damaged: {reason} (resume from an older "
                                 "step_* folder, or use --resume auto to pick the newest whole one)")


# ---- the checkpoint policy


def test_checkpoint_policy():
    every_16 = CheckpointPolicy(CheckpointConfig(every_steps=16, every_epoch=False), epochs=3, steps_per_epoch=128)
    assert every_16.after_step(_state(step=16, batches_done=16), stop_requested=False)
    assert not every_16.after_step(_state(step=17, batches_done=17), stop_requested=False)
    assert every_16.after_step(_state(step=17, batches_done=17), stop_requested=True)  # a stop always saves
    # The epoch's last step is left to the epoch-end checkpoint, which holds the validation too.
    assert not every_16.after_step(_state(step=256, batches_done=128), stop_requested=False)
    assert [every_16.after_epoch(_state(epoch=e)) for e in (1, 2, 3)] == [False, False, True]  # the last one always
    epochs_only = CheckpointPolicy(CheckpointConfig(), epochs=3, steps_per_epoch=128)
    assert not any(epochs_only.after_step(_state(step=s, batches_done=s), stop_requested=False) for s in range(1, 128))
    assert all(epochs_only.after_epoch(_state(epoch=e)) for e in (1, 2, 3))


# ---- the stop request on a real signal


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.001)
    return condition()


def test_sigterm_asks_for_a_stop_a_second_signal_stops_at_once_and_handlers_come_back(accelerator):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequest(accelerator) as stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(stop.agreed) and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False, 2.0)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    stopped = Stopped(64, Path("/runs/x/step_000064"), Path("/runs/x"), stop.signum)
    assert stopped.exit_code == 143
    assert stopped.line() == ("mnist-sum: stopped at step 64, checkpoint step_000064 saved; continue with --resume auto "
                              "run.dir=/runs/x")


# ---- the error types


@pytest.mark.parametrize("error", [
    UsageError("optim.lr must be > 0, got 0", "e.g. optim.lr=0.003"),
    Diverged("the weights became NaN or infinite by step 7; no checkpoint holds them", 7),
    DamagedCheckpoint("/runs/x/step_000064", "meta.json is missing"),
    LaunchError("launched 2 processes but Accelerate formed a group of 1", "check the accelerate launch flags"),
    LostPeer(1, "Connection reset by peer"),
])
def test_errors_say_one_line_and_survive_the_trip_between_ranks(error):
    # main_decides sends the main process's error to the others pickled: type, line and exit code must survive.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.line() == error.line() and copy.exit_code == error.exit_code
    assert isinstance(error, ProjectError) and error.line().startswith("mnist-sum: error: ") and "\n" not in error.line()
    assert error.exit_code == (1 if isinstance(error, LostPeer) else 2)


# ---- the one exit path


@pytest.fixture
def offline_wandb(monkeypatch):
    """W&B offline in this process; its service is shut down afterwards, so no later test talks to it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.teardown()


def test_a_failing_run_closes_its_tracker_restores_signals_and_ends_in_one_error(tmp_path, offline_wandb, monkeypatch):
    outside = []  # the SIGTERMs that reached the handler outside the run

    def before(signum, frame):
        outside.append(signum)

    end_training = Accelerator.end_training

    def end_training_meeting_sigterm(self):
        # As in a job whose peer died: the launcher's SIGTERM arrives while the trainer cleans up after the error.
        os.kill(os.getpid(), signal.SIGTERM)
        end_training(self)

    previous = signal.signal(signal.SIGTERM, before)
    monkeypatch.setattr(Accelerator, "end_training", end_training_meeting_sigterm)
    cfg = load_config(None, ["data.train_limit=640", "data.val_size=100", "model.channels=[4]", "model.sum_hidden=8",
                             "train.global_batch_size=64", "train.log_every=1", "optim.lr=1e6", f"run.dir={tmp_path / 'run'}"])
    try:
        with pytest.raises(Diverged):
            train(cfg, config_name="diverging")
        assert signal.getsignal(signal.SIGTERM) is before
        assert outside == []  # the signal in the clean-ups was the run's (noted), not the default's (the end)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert wandb.run is None  # the W&B run was finished ...
    wandb.teardown()  # its service writes the run file in the background: wait until everything is on disk
    (run_file,) = (tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb")
    exits = [r.exit for r in read_records(run_file) if r.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [1]  # ... as failed
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines and all(json.loads(x) for x in lines)  # every line written whole before the file was closed


# ---- agreement between ranks, on a real 2-process gloo group


def test_ranks_agree_on_stop_decisions_batchnorm_statistics_and_train_metrics(tmp_path):
    result = launch(["tests/ranks_check.py", str(tmp_path / "seen")], num_processes=2, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen.{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["world_size"] for s in seen] == [2, 2]
    for s in seen:
        # Momentum 0.1, two groups a step: the step adds 0.1 x (1 + 2) / 2 to the mean and 0 to the variance,
        # which decays to 0.9 of its 1; rank 0's share holds that decay, rank 1's only what its group added.
        assert s["running"] == pytest.approx([0.15, 0.9])
    assert seen[0]["shares"] == pytest.approx([0.05, 0.9]) and seen[1]["shares"] == pytest.approx([0.1, 0.0])
    assert seen[0]["running"] == seen[1]["running"]  # bit for bit: the same gathered shares, summed the same way
    assert seen[0]["shares_after"] == seen[0]["running"] and seen[1]["shares_after"] == [0.0, 0.0]
    for s in seen:
        assert not s["stop_before_signal"] and s["stop_after_signal"]  # rank 1's signal stops both
        assert s["decided"] == {"decided_by": 0}
        assert s["error"] == ["UsageError", "mnist-sum: error: run folder 'x' already exists (choose another)"]
        assert s["diverged_at"] == 5  # the first bad step over both ranks
        window = s["window"]  # 4 samples over both ranks: 3 digits right, all 4 sums
        assert window["train/digit_acc"] == 0.75 and window["train/sum_acc"] == 1.0
        assert window["train/digit_loss"] == pytest.approx(1.5) and window["train/sum_loss"] == pytest.approx(1.0)
    assert [s["signal_here"] for s in seen] == [None, signal.SIGTERM]
