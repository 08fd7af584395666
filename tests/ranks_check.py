"""Launched by tests/test_loop_parts.py under `accelerate launch` with 2 processes: the loop's parts that need
the ranks to agree, on a real gloo process group. Each rank writes what it saw to OUT.<rank>.json."""

import json
import os
import signal
import sys
import time

import torch

from mnist_sum.distributed.accelerator import make_accelerator
from mnist_sum.distributed.ranks import main_decides
from mnist_sum.distributed.signals import StopRequest
from mnist_sum.errors import Diverged, UsageError
from mnist_sum.model.layers import GhostBatchNorm2d, sum_running_stats
from mnist_sum.train.step import StepOutput
from mnist_sum.train.window import TrainMetricsWindow

out = sys.argv[1]
accelerator = make_accelerator()
rank = accelerator.process_index
seen = {"world_size": accelerator.num_processes}

# Ghost BatchNorm: each rank adds its groups' statistics to its own share of the running statistics, and the
# shares are summed at a log step. Rank 0's share starts as the running statistics (mean 0, var 1), the
# other's as zero; rank r sees a batch of one group whose every value is r + 1 (mean r + 1, variance 0).
norm = GhostBatchNorm2d(1, group_size=2, groups_per_step=2).train()
norm(torch.full((2, 1, 2, 2), rank + 1.0))
seen["shares"] = [*norm.share_mean.tolist(), *norm.share_var.tolist()]
sum_running_stats(norm)
seen["running"] = [*norm.running_mean.tolist(), *norm.running_var.tolist()]
seen["shares_after"] = [*norm.share_mean.tolist(), *norm.share_var.tolist()]

# Only rank 1 gets a real SIGTERM; both ranks agree to stop at the same step.
with StopRequest(accelerator) as stop:
    seen["stop_before_signal"] = stop.agreed()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while stop.signum is None and time.time() < deadline:
            time.sleep(0.001)
    seen["stop_after_signal"] = stop.agreed()
    seen["signal_here"] = stop.signum


# The main process decides (a run folder, say) and every rank gets its answer, or its error.
def refuse():
    raise UsageError("run folder 'x' already exists", "choose another")


seen["decided"] = main_decides(accelerator, lambda: {"decided_by": rank})
try:
    main_decides(accelerator, refuse)
except UsageError as err:
    seen["error"] = [type(err).__name__, err.line()]

# Train metrics over both ranks: a healthy window sums their samples ...
labels, numbers = torch.tensor([1, 2]), torch.tensor([3, 3])
digits = torch.eye(10)[[1, 2 if rank == 0 else 0]]  # rank 0 reads both digits, rank 1 one of two
window = TrainMetricsWindow(accelerator.device)
window.add(StepOutput(digits, torch.eye(19)[[4, 5]], torch.full((2,), 1.0 + rank), torch.ones(2)), 1, labels, numbers)
seen["window"] = window.flush(accelerator, lr=0.1, epoch=0.5)
# ... and a loss that went NaN at step 5 on rank 1 and at step 7 on rank 0 stops both, naming step 5.
for step in range(2, 9):
    bad = (rank == 1 and step == 5) or (rank == 0 and step == 7)
    loss = torch.tensor(float("nan") if bad else 1.0)
    window.add(StepOutput(digits, torch.eye(19)[[4, 5]], loss.expand(2), loss.expand(2)), step, labels, numbers)
try:
    window.flush(accelerator, lr=0.1, epoch=1.0)
except Diverged as err:
    seen["diverged_at"] = err.step

with open(f"{out}.{rank}.json", "w") as f:
    json.dump(seen, f)
accelerator.end_training()
