"""Checkpoint and resume, for real: runs killed with SIGKILL or stopped with SIGTERM mid-epoch, then resumed,
must end with final weights byte-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, child_env, descendants, launch_cmd, train_in_process
from wandb_records import history, merged_history

from mnist_sum.train.checkpoint import find_latest, prune

# 3 epochs x 128 steps of the smoke recipe, a checkpoint every 16 steps (and each epoch end), 3 kept. Ghost
# BatchNorm, the normalisation with state of its own: per-process shares of the running statistics, summed at
# log steps and checkpoints, which a resume must restore exactly.
RECIPE = ["--config", "configs/smoke.yaml", "train.epochs=3", "checkpoint.every_steps=16", "checkpoint.keep_last=3",
          "model.norm=ghost"]


def _cmd(num_processes: int) -> list[str]:
    if num_processes == 1:
        return [sys.executable, "train.py"]  # plain Python: the signal goes straight to the training process
    return [*launch_cmd(num_processes), "train.py"]


def _run(args: list[str], num_processes: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([*_cmd(num_processes), *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=600)


def _interrupt(run_dir, sig: int, num_processes: int = 1, wait_for: str = "step_000064",
               extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Start the recipe, wait until `wait_for` exists (128 steps an epoch: step_000064 is mid-epoch 1), then
    signal it."""
    proc = subprocess.Popen([*_cmd(num_processes), *RECIPE, f"run.dir={run_dir}", *extra], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / wait_for).exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.005)
    if sig == signal.SIGKILL:  # a crash: every process dies at once, wherever it is (even mid-save)
        for pid in [proc.pid, *descendants(proc.pid)]:
            os.kill(pid, signal.SIGKILL)
    else:  # preemption: the launcher or the process gets the signal
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert not (run_dir / "results.json").exists(), "the run finished before it was interrupted"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _resume(run_dir, num_processes: int = 1, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    result = _run(["--resume", "auto", f"run.dir={run_dir}", *extra], num_processes)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timing = ("train/samples_per_s", "train/elapsed_s")  # wall-clock figures: the only things that may differ
    return [{k: v for k, v in x.items() if k not in timing} for x in lines]


def _rows_by_step(lines: list[dict]) -> list[dict]:
    """metrics.jsonl as W&B stores it: the lines logged at one step make one history row."""
    rows: dict[int, dict] = {}
    for line in lines:
        rows.setdefault(line["step"], {}).update({k: v for k, v in line.items() if k != "step"})
    return [{"_step": step, **values} for step, values in rows.items()]


def _wandb_rows(rows: list[dict]) -> list[dict]:
    """W&B history rows without W&B's own columns, the media (tables, charts) and the wall-clock figures."""
    drop = ("_runtime", "_timestamp", "train/samples_per_s", "train/elapsed_s", "val/misclassified", "val/confusion_")
    return [{k: v for k, v in row.items() if not k.startswith(drop)} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs with 1 and 2 processes, made on first use. The 1-process one is started with
    `--resume auto` on a new folder, as a job script for a preemptible queue starts every run."""
    made = {}

    def get(num_processes: int, with_output: bool = False):
        if num_processes not in made:
            run_dir = tmp_path_factory.mktemp("reference") / f"ref{num_processes}"
            auto = ["--resume", "auto"] if num_processes == 1 else []
            result = _run([*auto, *RECIPE, f"run.dir={run_dir}"], num_processes)
            assert result.returncode == 0, result.stderr[-3000:]
            made[num_processes] = run_dir, result
        return made[num_processes] if with_output else made[num_processes][0]

    return get


def test_sigkill_in_epoch_2_then_resume_is_byte_identical(reference, tmp_path):
    ref = reference(1)
    # Mid-epoch 2: a resume after the first epoch is where Accelerate < 1.15 went wrong (accelerate#4071).
    trackers = ("tracking.log_with=[wandb,tensorboard]",)  # no effect on the weights: the reference runs without
    killed = _interrupt(tmp_path / "run", signal.SIGKILL, wait_for="step_000160", extra=trackers)
    assert killed.returncode == -signal.SIGKILL
    result = _resume(tmp_path / "run")
    assert "resuming from step_" in result.stdout
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    # The log reads as one run: the same lines, steps never going backwards.
    assert _metrics(tmp_path / "run") == _metrics(ref)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"] == json.loads(
        (ref / "results.json").read_text())["test"]
    # One W&B run: the resumed session logs to the same run id (and replays the log up to its checkpoint,
    # which the killed session may not have written out).
    files = sorted((tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and len({f.name for f in files}) == 1  # run-<same id>.wandb, twice
    # The killed segment may hold no row at all (W&B writes it from another process, which SIGKILL can beat).
    assert max((r["_step"] for r in history(files[0])), default=-1) < 384 == max(r["_step"] for r in history(files[1]))
    # The upload line names both segments, oldest first; uploaded so, W&B holds exactly the metrics.jsonl log.
    upload = result.stderr.split("upload later with: wandb sync ")[1].splitlines()[0].split()
    assert [Path(p).resolve() for p in upload] == [f.parent.resolve() for f in files]
    assert _wandb_rows(merged_history(files)) == _rows_by_step(_metrics(tmp_path / "run"))
    # TensorBoard reads the two sessions' event files as one log: the train loss of every logged step, once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (board,) = {p.parent for p in (tmp_path / "run" / "tensorboard").glob("*/events.out.tfevents.*")}
    logged = [(x["step"], x["train/loss"]) for x in _metrics(tmp_path / "run") if "train/loss" in x]
    assert [(e.step, e.value) for e in EventAccumulator(str(board)).Reload().Scalars("train/loss")] == [
        (step, pytest.approx(loss)) for step, loss in logged]


@pytest.mark.slow  # the default pytest's budget; the SIGKILL resume above stays in it (2 processes: SIGTERM in slow)
def test_sigterm_saves_a_checkpoint_and_resumes_byte_identical(reference, tmp_path):
    ref = reference(1)
    stopped = _interrupt(tmp_path / "run", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mnist-sum: stopped at step ") and "--resume auto" in last_line
    step = int(last_line.split("stopped at step ")[1].split(",")[0])
    meta = json.loads((tmp_path / "run" / f"step_{step:06d}" / "meta.json").read_text())
    assert meta["step"] == step and meta["epoch"] == 0 and meta["batches_done"] == step  # mid-epoch 1
    _resume(tmp_path / "run")  # without --config: the run's own config.yaml, and its own config name
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"] == "smoke" and results["resumed_from"] == f"step_{step:06d}"
    steps = [x["step"] for x in _metrics(tmp_path / "run")]
    assert steps == sorted(steps) and steps[-1] == 384


@pytest.mark.slow
def test_two_processes_sigkill_in_epoch_3_then_resume_is_byte_identical(reference, tmp_path):
    ref = reference(2)
    _interrupt(tmp_path / "run", signal.SIGKILL, num_processes=2, wait_for="step_000288")  # mid-epoch 3
    _resume(tmp_path / "run", num_processes=2)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert _metrics(tmp_path / "run") == _metrics(ref)


@pytest.mark.slow
def test_ghost_batchnorm_trains_the_same_function_on_one_and_two_processes(reference):
    # Each BatchNorm group of 16 lies on one process: the same normalisation of every sample, so the curves agree
    # up to float rounding (most likely the groups' BatchNorm gradients, summed in another order), which a
    # BatchNorm net amplifies: from first steps 3e-8 apart to 0.13% at most in the first epoch (held, like the
    # other process counts, within 0.2%) and 0.2% by the third.
    one, two = _metrics(reference(1)), _metrics(reference(2))
    pairs = [(a, b) for a, b in zip(one, two) if "train/loss" in a and a["step"] <= 128]
    assert len(pairs) == 16 and all(a["step"] == b["step"] for a, b in pairs)
    assert abs(pairs[0][1]["train/loss"] / pairs[0][0]["train/loss"] - 1) < 1e-6
    assert max(abs(b["train/loss"] / a["train/loss"] - 1) for a, b in pairs) < 0.002
    val = [(a, b) for a, b in zip(one, two) if "val/loss" in a and a["step"] == 128]
    assert len(val) == 1 and abs(val[0][1]["val/loss"] / val[0][0]["val/loss"] - 1) < 0.002


@pytest.mark.slow
def test_two_processes_sigterm_stops_every_rank_at_one_step(reference, tmp_path):
    ref = reference(2)
    _interrupt(tmp_path / "run", signal.SIGTERM, num_processes=2)  # to the launcher, which forwards it
    latest, state = find_latest(tmp_path / "run")
    assert state.world_size == 2 and (latest / "random_states_1.pkl").exists()
    _resume(tmp_path / "run", num_processes=2)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()


def _worker(launcher: int, rank: int) -> int:
    """The pid of the training process of global rank `rank` below the launcher."""
    for pid in descendants(launcher):
        try:
            env = (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"), Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
        if f"RANK={rank}".encode() in env[0] and b"train.py" in env[1]:
            return pid
    raise AssertionError(f"no rank {rank} worker below {launcher}")


@pytest.mark.slow
def test_elastic_restart_continues_the_run_by_itself(reference, tmp_path):
    """`accelerate launch --max_restarts 1`, no --resume and no run name: one worker dies in the second epoch,
    the launcher restarts the group, and the run continues in its own (timestamped) folder."""
    ref = reference(2)
    cmd = [*launch_cmd(2), "--max_restarts", "1", str(ROOT / "train.py"), *RECIPE]
    cmd[cmd.index("configs/smoke.yaml")] = str(ROOT / "configs" / "smoke.yaml")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob("runs/smoke-*/step_000160")):  # a checkpoint mid-epoch 2
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(_worker(proc.pid, 1), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "restart 1 of at most 1 by the launcher" in err and "resuming from step_000160" in out
    [run] = tmp_path.glob("runs/*")  # one folder: the restarted workers found the run by its start time
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert _metrics(run) == _metrics(ref)  # the same lines: steps never go backwards
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and len({f.name for f in files}) == 1  # one W&B run id, a segment per start


def test_pruning_keeps_the_newest_whole_checkpoints(reference):
    ref = reference(1)
    assert sorted(p.name for p in ref.glob("step_*")) == ["step_000352", "step_000368", "step_000384"]
    assert not list(ref.glob(".tmp_*"))


def test_damaged_checkpoint_is_skipped_by_auto_and_refused_by_path(reference, tmp_path):
    ref = reference(1)
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "results.json").unlink()
    weights = run / "step_000384" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated

    refused = _run(["--resume", str(run / "step_000384")])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"mnist-sum: error: checkpoint {run / 'step_000384'} is damaged: model.safetensors is damaged (checksum "
        "mismatch) (resume from an older step_* folder, or use --resume auto to pick the newest whole one)"]

    result = _resume(run)
    assert f"skipping damaged checkpoint {run / 'step_000384'}" in result.stderr
    assert "resuming from step_000368" in result.stdout
    # 16 more steps, the last validation and the test: the same final weights as the reference.
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()


def test_unfinished_or_unreadable_checkpoints_are_never_chosen(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "step_000010").mkdir(parents=True)  # no meta.json: a save that never finished
    (run / ".tmp_step_000020").mkdir()  # a save killed before its rename
    assert find_latest(run) is None
    assert "warning: skipping damaged checkpoint" in capsys.readouterr().err
    (run / "step_000030").mkdir()
    (run / "step_000030" / "meta.json").write_text("{not json")
    assert find_latest(run) is None
    assert f"skipping damaged checkpoint {run / 'step_000030'}: meta.json is unreadable" in capsys.readouterr().err
    prune(run, keep_last=1)  # nothing whole: nothing is deleted
    assert (run / "step_000010").exists() and (run / "step_000030").exists()


def test_resume_refuses_a_changed_recipe(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference(1), run)
    code, err = train_in_process(["--resume", "auto", f"run.dir={run}", "optim.lr=0.01"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == ("mnist-sum: error: the config differs from checkpoint step_000384's "
                                            "(optim.lr: 0.001 -> 0.01) (drop those overrides to resume that run "
                                            "exactly, or start a new run)")


def test_resume_auto_without_a_run_name_is_refused(capsys):
    # Without run.name or run.dir every start would make a new timestamped folder and never resume anything.
    runs = sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").exists() else []
    code, err = train_in_process(["--resume", "auto", "--config", str(ROOT / "configs" / "smoke.yaml")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "mnist-sum: error: --resume auto needs to know which run to continue (name it: run.name=NAME for the "
        "folder runs/NAME, or run.dir=PATH; the same at every start)"]
    assert (sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").exists() else []) == runs  # nothing made


def test_resume_auto_without_checkpoint_starts_fresh(reference):
    run_dir, result = reference(1, with_output=True)  # started with --resume auto on a folder that did not exist
    assert "resuming" not in result.stdout and (run_dir / "results.json").exists()
    assert json.loads((run_dir / "results.json").read_text())["resumed_from"] is None


@pytest.mark.slow
def test_resume_with_another_number_of_processes_continues(reference, tmp_path):
    killed = tmp_path / "run"
    _interrupt(killed, signal.SIGKILL)
    result = _resume(killed, num_processes=2)
    assert "the checkpoint was written by 1 process(es)" in result.stdout
    results = json.loads((killed / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 384 and results["test"]["num_samples"] == 10000
