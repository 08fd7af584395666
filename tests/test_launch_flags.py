"""`accelerate launch` flags: each honoured (and recorded) or refused in one line (mnist_sum.distributed.launch_flags)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, child_env, free_port, launch
from test_distributed import SMOKE, _loss_gaps

from mnist_sum.config import load_config
from mnist_sum.distributed.launch_flags import check_launch_flags, read_launch_flags
from mnist_sum.errors import UsageError


def _refused(result, flag: str) -> str:
    """The project's one line about `flag`, checked to be an exit 2 and to come before anything the launcher says."""
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    ours = [i for i, line in enumerate(lines) if line.startswith("mnist-sum: error:")]
    assert ours and flag in lines[ours[0]], result.stderr[-2000:]
    assert not any("Traceback" in line for line in lines[:ours[0]])  # nothing from the training process before it
    assert "exit status 2" in result.stderr or "exitcode: 2" in result.stderr
    return lines[ours[0]]


def test_gradient_accumulation_trains_the_same_function_in_micro_batches(smoke_run, tmp_path):
    run_dir = tmp_path / "micro"
    result = launch([*SMOKE, f"run.dir={run_dir}", "wandb.mode=disabled"],
                    extra=["--gradient_accumulation_steps", "4", "--debug"])
    assert result.returncode == 0, result.stderr[-3000:]
    # Honoured: the recipe takes it as train.micro_batches, and says so in its first line and results.json.
    assert "64 in 4 micro-batches; accelerate launch flags: gradient_accumulation_steps=4" in result.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["micro_batches"] == 4
    results = json.loads((run_dir / "results.json").read_text())
    assert results["launch_flags"] == {"gradient_accumulation_steps": 4, "debug": True, "cpu": True}
    assert results["steps"] == 128  # one optimizer step per global batch of 64, as without it
    # The same function: each micro-batch's loss scaled as the step's, gradients summed before one step. What
    # is left is float rounding, as between process counts (tests/test_distributed.py).
    assert max(_loss_gaps(smoke_run[0], run_dir)) < 0.002


def test_clipping_and_threads_map_onto_the_recipe(tmp_path):
    run_dir = tmp_path / "clip"
    result = launch([*SMOKE, f"run.dir={run_dir}", "wandb.mode=disabled", "data.train_limit=640"],
                    extra=["--gradient_clipping", "0.5", "--num_cpu_threads_per_process", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["grad_clip"] == 0.5 and saved["train"]["cpu_threads"] == 1
    results = json.loads((run_dir / "results.json").read_text())
    assert results["launch_flags"]["gradient_clipping"] == 0.5 and results["threads"] == 1


def test_a_flag_and_the_config_that_disagree_are_refused(tmp_path):
    result = launch([*SMOKE, f"run.dir={tmp_path / 'run'}", "optim.grad_clip=1.0"], extra=["--gradient_clipping", "2"])
    _refused(result, "--gradient_clipping 2.0 and optim.grad_clip=1.0 disagree")
    assert not (tmp_path / "run").exists()


def test_sharding_is_refused_before_accelerate_fails(tmp_path):
    # Two processes: Accelerate's own error (no FSDP device on a CPU) would come from each rank; ours comes first.
    # As a user types it (Accelerate refuses --use_fsdp beside --multi_gpu, which launch() passes).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
           "--main_process_port", str(free_port()), *SMOKE, f"run.dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert "plain data parallelism" in _refused(result, "--use_fsdp")
    assert "no available devices" not in result.stderr


@pytest.mark.parametrize("extra, flag", [
    (["--enable_cpu_affinity"], "--enable_cpu_affinity"),
    (["--dynamo_backend", "aot_eager"], "--dynamo_backend aot_eager"),
    (["--dynamo_backend", "inductor", "--dynamo_mode", "max-autotune"], "--dynamo_mode"),
])
def test_flags_not_run_here_are_refused_in_one_line(extra, flag, tmp_path):
    result = launch([*SMOKE, f"run.dir={tmp_path / 'run'}"], extra=extra)
    _refused(result, flag)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env, says", [
    # Accelerate's launcher stops at these itself unless DeepSpeed / Megatron-LM / an fp8 library is installed;
    # where one is, the processes get the variable, and the project refuses it before the Accelerator exists.
    ("ACCELERATE_USE_DEEPSPEED", "--use_deepspeed"),
    ("ACCELERATE_USE_MEGATRON_LM", "--use_megatron_lm"),
    ("ACCELERATE_USE_PARALLELISM_CONFIG", "--use_parallelism_config"),
])
def test_what_only_reaches_the_processes_with_its_library_is_refused_too(env, says, monkeypatch):
    monkeypatch.setenv(env, "true")
    with pytest.raises(UsageError, match=says):
        check_launch_flags(gpu=True)


def test_fp8_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UsageError, match="use --mixed_precision bf16"):
        check_launch_flags(gpu=True)


def test_inductor_becomes_train_compile_and_accelerate_does_not_compile_again(monkeypatch):
    # The whole compiled run is bench/gpu_check.sh's (12-37 s to compile on 2 cores): here, the mapping.
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    cfg, record = read_launch_flags(load_config(None))
    assert cfg.train.compile and record == {"dynamo_backend": "inductor"}
    assert os.environ["ACCELERATE_DYNAMO_BACKEND"] == "NO"
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    with pytest.raises(UsageError, match="both compile"):
        read_launch_flags(load_config(None, ["train.compile=true"]))


@pytest.mark.slow  # compiling takes 12-37 s on 2 cores
def test_inductor_from_the_launcher_compiles_through_train_compile(tmp_path):
    run_dir = tmp_path / "compiled"
    result = launch([*SMOKE, f"run.dir={run_dir}", "wandb.mode=disabled", "data.train_limit=640"],
                    extra=["--dynamo_backend", "inductor"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["compile"] is True
    assert json.loads((run_dir / "results.json").read_text())["launch_flags"]["dynamo_backend"] == "inductor"
    # Compiled once, by the trainer: the saved weights are the plain network's (no compiled wrapper's prefix).
    from safetensors import safe_open  # here: only this test reads a weights file's names

    with safe_open(str(run_dir / "model.safetensors"), "pt") as weights:
        assert weights.keys() and not any(k.startswith("_orig_mod") for k in weights.keys())
