"""The training step never makes the host wait for the device between log steps (what a CPU can show of it:
tests/host_reads_check.py says what it sees and what only bench/gpu_check.sh can)."""

from __future__ import annotations

import json

import pytest
from conftest import launch


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_no_host_reads_host_made_tensors_or_extra_collectives_between_log_steps(micro_batches, tmp_path):
    # 1536 / 64 = 24 steps: a warm-up window of 8, then 16 recorded steps (2 x train.log_every), 2 processes.
    # Ghost BatchNorm: of the normalisations, the one with statistics, which it must not exchange in the step.
    # Two micro-batches (a ghost group each): gradients still exchanged once per step, after the last one.
    result = launch(["tests/host_reads_check.py", str(tmp_path / "seen"), "data.train_limit=1536", "wandb.mode=disabled",
                     "model.norm=ghost", f"train.micro_batches={micro_batches}", f"run.dir={tmp_path / 'run'}"],
                    num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"seen.{rank}.json").read_text())
        assert seen["world_size"] == 2 and seen["steps"] == 24
        assert seen["seen"] == [], seen["seen"][:20]
        # Logged at steps 8, 16 and 24; the stop request is asked there and nowhere else (before: every step), and
        # the BatchNorm shares are summed there.
        assert seen["calls"] == {"_log_train_window": 3, "agreed": 3, "save_checkpoint": 0, "sum_running_stats": 3}
        # One collective per step, DDP's gradient all-reduce (the smoke net's gradients fit one bucket): the
        # BatchNorm layers communicate nothing (their running statistics are summed at log steps).
        assert seen["collectives"] == {"ddp_buckets": 16, "other": []}
