"""Launched by tests/test_host_reads.py under `accelerate launch` (2 processes): real training steps of the smoke
recipe under a TorchDispatchMode that records every op that makes the host wait for the device or sends host
data to it, and writes what each rank saw between log steps to OUT.<rank>.json.

Two reads that cost nothing on a GPU but are host reads on a CPU are avoided rather than counted apart: the
default (foreach) AdamW keeps its step counters on the host and reads them every step (a GPU would read host
memory, no sync), so the optimizer is the fused one, whose counters live with the parameters; and `F.one_hot`
checks its input's range on the CPU only, so the sum head compares with arange instead.

What a CPU can show: every op reaches the dispatcher here as it would on a GPU, so a read of a device value
(`.item()`, `.tolist()`, `int(t)`, `bool(t)`: aten._local_scalar_dense, aten.is_nonzero, aten.equal), an op
whose output size depends on the data (aten.nonzero, masked_select, unique) and a tensor built from Python or
numpy data (`torch.tensor(...)`: aten.lift_fresh) are all seen. What it cannot show: a copy between host and
device (on a CPU `.cpu()` and `.to(device)` are no-ops and dispatch nothing; a tensor made by `torch.from_numpy`
dispatches nothing either) and the syncs inside NCCL; bench/gpu_check.sh repeats the run under
`torch.cuda.set_sync_debug_mode("error")`, which catches those.

It also counts the collectives between log steps: each torch.distributed call from Python, and DDP's gradient
all-reduces (per bucket, through a comm hook that does what DDP does without one).

The first `train.log_every` steps (the run's first step counts its FLOPs) are a warm-up; the next two windows
are recorded, with the log lines, the stop request asked at them and any checkpoint left out: those run only
at log steps, and may read the host.
"""

import json
import os
import sys
import time
import traceback

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_sum.commands import exit_now
from mnist_sum.config import PROJECT_ROOT, load_config
from mnist_sum.train import trainer as trainer_module
from mnist_sum.train.clock import RunClock

HOST_WAITS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.nonzero", "aten.masked_select",
              "aten._unique2", "aten.unique_dim", "aten.unique_consecutive"}
HOST_DATA = {"aten.lift_fresh", "aten.lift_fresh_copy", "aten.lift"}


class Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.on, self.paused, self.seen = False, 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if self.on and not self.paused and name in HOST_WAITS | HOST_DATA:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            where = f"{frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else "?"
            self.seen.append({"op": name, "where": where})
        return func(*args, **(kwargs or {}))


recorder = Recorder()
# bench/gpu_check.sh sets this on a GPU: any synchronizing CUDA call between log steps then raises.
SYNC_DEBUG = os.environ.get("MNIST_SUM_SYNC_DEBUG") == "1" and torch.cuda.is_available()


def set_sync_debug() -> None:
    if SYNC_DEBUG:
        torch.cuda.set_sync_debug_mode("error" if recorder.on and not recorder.paused else "default")


calls = {"_log_train_window": 0, "agreed": 0, "save_checkpoint": 0, "sum_running_stats": 0}


def at_log_steps(method, name=None):
    """Log steps may read the host: pause recording inside them; start recording after the first one. Calls are
    counted, so the test sees that the stop request is asked only when a line is logged."""
    def wrapped(*args, **kwargs):
        if not recorder.paused:
            calls[name or method.__name__] += 1
        recorder.paused += 1
        set_sync_debug()
        try:
            return method(*args, **kwargs)
        finally:
            recorder.paused -= 1
            recorder.on = True
            set_sync_debug()
    return wrapped


out, *overrides = sys.argv[1:]  # OUT [--config FILE] [section.key=value ...]; the smoke recipe by default
config = PROJECT_ROOT / "configs" / "smoke.yaml"
if overrides[:1] == ["--config"]:
    config, overrides = overrides[1], overrides[2:]
Trainer = trainer_module.Trainer
# The train log's flushes keep their old count name (the trainer's method that flushed before TrainLog).
trainer_module.TrainLog.flush = at_log_steps(trainer_module.TrainLog.flush, "_log_train_window")
trainer_module.Checkpointer.save = at_log_steps(trainer_module.Checkpointer.save, "save_checkpoint")
trainer_module.StopRequest.agreed = at_log_steps(trainer_module.StopRequest.agreed)
trainer_module.sum_running_stats = at_log_steps(trainer_module.sum_running_stats)

# Collectives between log steps: every torch.distributed call made from Python (a layer's, Accelerate's), and
# DDP's gradient all-reduces, counted per bucket by a comm hook that then does what DDP does by default.
collectives = {"ddp_buckets": 0, "other": []}


def counted(name, original):
    def call(*args, **kwargs):
        if recorder.on and not recorder.paused:
            collectives["other"].append(name)
        return original(*args, **kwargs)
    return call


for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
             "broadcast_object_list", "reduce", "reduce_scatter_tensor", "all_to_all", "barrier", "gather", "scatter"):
    setattr(torch.distributed, name, counted(name, getattr(torch.distributed, name)))


def counting_allreduce(state, bucket):
    if recorder.on and not recorder.paused:
        collectives["ddp_buckets"] += 1
    recorder.paused += 1  # its all_reduce is this bucket's, not another collective
    try:
        return allreduce_hook(state, bucket)
    finally:
        recorder.paused -= 1


cfg = load_config(config, overrides)
accelerator = trainer_module.make_accelerator(timeout_s=cfg.train.dist_timeout_s)
with Trainer(cfg, "smoke", None, accelerator, RunClock(time.perf_counter())) as trainer:
    if accelerator.num_processes > 1:
        trainer.model.prepared.register_comm_hook(None, counting_allreduce)
    with recorder:
        trainer.train_epoch()
    recorder.on = False
    set_sync_debug()
    steps = trainer.state.step
with open(f"{out}.{accelerator.process_index}.json", "w") as f:
    json.dump({"steps": steps, "world_size": accelerator.num_processes, "seen": recorder.seen, "calls": calls,
               "collectives": collectives}, f)
# Ended as train.py ends (mnist_sum.commands.exit_now): without the interpreter's teardown, where torch 2.11's
# gloo threads once aborted a finished two-process run ("terminate called without an active exception").
exit_now(0)
