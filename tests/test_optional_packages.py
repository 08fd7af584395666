"""A run that does not use W&B or Hugging Face datasets does not need them installed (the GPU machine this project
is lent has neither: bench/gpu_check.sh runs there with W&B disabled and the bundled IDX files)."""

from __future__ import annotations

import json

from conftest import run_python

# Both imports fail in this interpreter, as on a machine without the packages.
WITHOUT = """
import sys
sys.modules["wandb"] = None
sys.modules["datasets"] = None
from mnist_sum.commands import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def test_a_run_with_wandb_disabled_needs_neither_wandb_nor_datasets(tmp_path):
    run_dir = tmp_path / "run"
    result = run_python(["-c", WITHOUT, "--config", "configs/smoke.yaml", f"run.dir={run_dir}",
                         "data.train_limit=640"], extra_env={"WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["test"]["num_samples"] == 10000
    assert not (run_dir / "wandb").exists()
