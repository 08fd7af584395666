"""Shared test helpers: the real MNIST splits (loaded once) and a runner for `accelerate launch`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist():
    from mnist_sum.data.sources import load_idx

    return load_idx(ROOT / "data" / "mnist")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One finished smoke run (plain `python train.py`, one process), shared by the tests that read it. It logs
    to W&B (offline) and TensorBoard, and logs its checkpoint to W&B as an artifact, so those tests read it too."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_python(["train.py", "--config", "configs/smoke.yaml", f"run.dir={run_dir}",
                         "tracking.log_with=[wandb,tensorboard]", "checkpoint.wandb_artifacts=true"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory):
    """The same smoke run with 2 processes (gloo) under `accelerate launch`, shared like `smoke_run`."""
    run_dir = tmp_path_factory.mktemp("e2e") / "two"
    result = launch(["train.py", "--config", "configs/smoke.yaml", f"run.dir={run_dir}"], num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    # Not WANDB_SERVICE: an in-process test's W&B service would otherwise be shared with every child run.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def launch(args: list[str], num_processes: int = 1, timeout: int = 300, extra: list[str] = (),
           cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`accelerate launch` on the CPU with `num_processes` processes (gloo), from the project root."""
    cmd = [*launch_cmd(num_processes), *extra, *args]
    return subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def run_script(name: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (mnist-sum-train, -evaluate, -predict) as a user would."""
    script = Path(sys.executable).parent / name
    return subprocess.run([str(script), *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def train_in_process(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `train.py ARGS` run in this process: for runs that end with an error before
    training, where a fresh interpreter would only add two seconds of start-up."""
    from mnist_sum.commands import train_main  # here: conftest is also imported by tests that never train

    code = train_main(args)
    return code, capsys.readouterr().err


def run_python(args: list[str], timeout: int = 120, cwd: Path = ROOT,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env() | (extra_env or {}), capture_output=True,
                          text=True, timeout=timeout)


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def launch_cmd(num_processes: int, port: int | None = None) -> list[str]:
    # --multi_gpu starts one process per rank; on a machine without GPUs they run on the CPU over gloo.
    mode = "--multi_gpu" if num_processes > 1 else "--cpu"
    return [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_machines", "1",
            "--num_processes", str(num_processes), "--main_process_port", str(port or free_port()),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
