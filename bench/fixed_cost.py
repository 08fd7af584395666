"""What a run costs besides training, phase by phase, from the command's start to its exit.

    python bench/fixed_cost.py                                  # the smoke recipe, W&B offline, 3 runs
    python bench/fixed_cost.py --config configs/quick.yaml --repeats 5

Runs `python train.py` as a user would (W&B offline, as without an API key) and prints one table: the
median over the runs of each phase. The phases inside the run come from its results.json (`phases_s`);
"start-up and exit" is the rest of the command's wall time: the interpreter, imports, and after the
results are written, W&B's finish and the process exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(config: str, wandb_mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = dict(os.environ, WANDB_MODE=wandb_mode, WANDB_SILENT="true")
        started = time.perf_counter()
        subprocess.run([sys.executable, "train.py", "--config", config, f"run.dir={run_dir}"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        command = time.perf_counter() - started
        results = json.loads((run_dir / "results.json").read_text())
    phases = results["phases_s"]
    return {"start-up and exit": command - results["wall_time_s"], **phases,
            "outside training": command - phases["train"], "command": command}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    args = parser.parse_args()
    runs = [one_run(args.config, args.wandb) for _ in range(args.repeats)]
    print(f"# {args.config}, W&B {args.wandb}, median of {args.repeats} runs (seconds)")
    print("| phase | seconds | what |")
    print("|---|---|---|")
    what = {"start-up and exit": "interpreter and imports; after results.json: W&B finish, process exit",
            "setup": "Accelerator, data (read and checksum), model, run folder, W&B start",
            "train": "training steps and validation", "test": "the test split, with the exhaustive score",
            "outputs": "weights, predictions, plots", "outside training": "all but training",
            "command": "the whole command"}
    for phase in what:
        print(f"| {phase} | {statistics.median(r[phase] for r in runs):.2f} | {what[phase]} |")


if __name__ == "__main__":
    main()
