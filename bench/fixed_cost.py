"""What a run costs besides training, phase by phase, from the command's start to its exit.

    python bench/fixed_cost.py                                  # the smoke recipe, W&B offline, 3 runs
    python bench/fixed_cost.py --config configs/quick.yaml --repeats 5
    python bench/fixed_cost.py --against /tmp/old-checkout [/tmp/older]    # side by side with other checkouts


Runs `python train.py` as a user would (W&B offline, as without an API key) and prints one table: the
median over the runs of each phase. The phases inside the run come from its results.json (`phases_s`);
"start-up and exit" is the rest of the command's wall time: the interpreter, imports, and after the
results are written, W&B's finish and the process exit. With --against, the runs of the checkouts
alternate, so that all meet the same machine (its speed swings by up to 30% from one minute to the next).
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


def one_run(root: Path, config: str, wandb_mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = dict(os.environ, WANDB_MODE=wandb_mode, WANDB_SILENT="true")
        started = time.perf_counter()
        subprocess.run([sys.executable, "train.py", "--config", config, f"run.dir={run_dir}"], cwd=root, env=env,
                       check=True, capture_output=True)
        command = time.perf_counter() - started
        results = json.loads((run_dir / "results.json").read_text())
    phases = results["phases_s"]
    return {"start-up and exit": command - results["wall_time_s"], **phases,
            "outside training": command - phases["train"], "command": command}


# What no run of this project can go below: torch and Accelerate imported, an optimizer made (any torch optimizer
# imports torch's compiler, torch._dynamo), a W&B offline run started and finished, the process ended at once.
FLOOR = """
import atexit, os, tempfile
import torch, accelerate, wandb
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
wandb.init(project="floor", dir=tempfile.mkdtemp(), mode="offline").finish()
atexit._run_exitfuncs()
os._exit(0)
"""


def floor_run() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], env=dict(os.environ, WANDB_SILENT="true"), check=True,
                   capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    parser.add_argument("--against", type=Path, nargs="+", default=[], help="other checkouts, run in turn with this one")
    args = parser.parse_args()
    roots = [ROOT, *(root.resolve() for root in args.against)]
    runs: dict[Path, list[dict[str, float]]] = {root: [] for root in roots}
    floors = []
    for _ in range(args.repeats):
        for root in roots:
            runs[root].append(one_run(root, args.config, args.wandb))
        floors.append(floor_run())
    print(f"# {args.config}, W&B {args.wandb}, median of {args.repeats} runs (seconds)")
    print("| phase | " + " | ".join(str(root) for root in roots) + " | what |")
    print("|---|" + "---|" * len(roots) + "---|")
    what = {"start-up and exit": "interpreter and imports; after results.json: W&B finish, process exit",
            "setup": "Accelerator, data (read and checksum), model, run folder, W&B start",
            "train": "training steps and validation", "test": "the test split, with the exhaustive score",
            "outputs": "weights, predictions, plots (the wait for them)", "outside training": "all but training",
            "command": "the whole command"}
    for phase in what:
        medians = [f"{statistics.median(r[phase] for r in runs[root]):.2f}" for root in roots]
        print(f"| {phase} | " + " | ".join(medians) + f" | {what[phase]} |")
    print(f"floor, {statistics.median(floors):.2f} s: a process that imports torch and Accelerate, makes an optimizer and "
          "starts and finishes a W&B offline run, nothing else")


if __name__ == "__main__":
    main()
