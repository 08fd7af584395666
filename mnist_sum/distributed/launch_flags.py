"""`accelerate launch` flags: each one that reaches the training processes is honoured or refused in one line.

`accelerate launch` hands its flags to the processes it starts as environment variables (accelerate's
utils/launch.py); the Accelerator reads some, ignores others and fails deep inside on others. `read_launch_flags`
reads them all before any work starts:

- honoured by mapping onto this project's own setting (so that the config, the run folder's config.yaml and a
  resume see it, and the trainer's one code path runs it): `--gradient_accumulation_steps N` ->
  `train.micro_batches`, `--gradient_clipping X` -> `optim.grad_clip`, `--dynamo_backend inductor` ->
  `train.compile` (Accelerate would compile the model itself, and then its unwrapped model, which
  checkpoints and evaluation use, would be the compiled wrapper);
- honoured by Accelerate as it is, and recorded: `--mixed_precision no|bf16|fp16`, `--cpu`, `--debug`,
  `--enable_cpu_affinity` (on GPUs);
- refused, with what to do instead: `--mixed_precision fp8`, `--use_fsdp`, `--use_deepspeed`,
  `--use_megatron_lm`, `--use_parallelism_config`, other dynamo backends and settings, `--enable_cpu_affinity`
  without a GPU.

Three flags never reach the processes: the launcher keeps `--gradient_accumulation_steps` and
`--gradient_clipping` for DeepSpeed only, and turns `--num_cpu_threads_per_process` into OMP_NUM_THREADS, which it
also sets (to 1) when the flag is not given. They are read from the launcher's own command line (the parent
process, parsed with Accelerate's parser); `--num_cpu_threads_per_process` maps onto `train.cpu_threads`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import psutil

from mnist_sum.config import Config
from mnist_sum.errors import UsageError

_SHARDING = {
    "ACCELERATE_USE_FSDP": "--use_fsdp",
    "ACCELERATE_USE_DEEPSPEED": "--use_deepspeed",
    "ACCELERATE_USE_MEGATRON_LM": "--use_megatron_lm",
    "ACCELERATE_USE_PARALLELISM_CONFIG": "--use_parallelism_config",
}
_DYNAMO_DEFAULTS = {  # what `accelerate launch` sets when the flag is not given
    "ACCELERATE_DYNAMO_MODE": ("--dynamo_mode", "default"),
    "ACCELERATE_DYNAMO_USE_FULLGRAPH": ("--dynamo_use_fullgraph", "False"),
    "ACCELERATE_DYNAMO_USE_DYNAMIC": ("--dynamo_use_dynamic", "False"),
    "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": ("--dynamo_use_regional_compilation", "False"),
}


def _on(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _refuse(what: str, fix: str) -> None:
    raise UsageError(what, fix)


def _mapped(cfg: Config, flag: str, key: str, value: Any) -> Config:
    """`cfg` with `section.key` set to the flag's value; a config that set it otherwise is a conflict."""
    section, name = key.split(".")
    part = getattr(cfg, section)
    default = getattr(type(part)(), name)
    if getattr(part, name) not in (default, value):
        _refuse(f"accelerate launch {flag} {value} and {key}={getattr(part, name)} disagree",
                f"give one of them (the flag sets {key})")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(part, **{name: value})})


def check_launch_flags(gpu: bool | None = None) -> None:
    """Refuse, in one line and before the Accelerator exists, the flags this project does not run. `gpu` None:
    not known yet (torch not loaded), the GPU-dependent check is left for the call that knows."""
    for env, flag in _SHARDING.items():
        if _on(env):
            _refuse(f"accelerate launch {flag}: sharding and model parallelism are for models too big for one "
                    "device; this 0.4M-parameter net fits on any, and they would only add communication",
                    "drop the flag: plain data parallelism (--multi_gpu --num_processes N) is what scales it")
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower() == "fp8":
        _refuse("accelerate launch --mixed_precision fp8: the net's matrix products are too small for fp8 to pay, "
                "and it needs Transformer Engine or torchao", "use --mixed_precision bf16")
    if _on("ACCELERATE_CPU_AFFINITY") and gpu is False:
        _refuse("accelerate launch --enable_cpu_affinity binds each process to the CPUs nearest its GPU, and there "
                "is no GPU here", "drop it; train.cpu_threads sets the threads per process on the CPU")


def launcher_args() -> argparse.Namespace | None:
    """The flags of the `accelerate launch` that started this process (its parent: the launcher itself, or the
    torchrun agent it runs in-process), parsed by Accelerate's own parser; None when not under it."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:  # set by every accelerate launch
        return None
    try:
        argv = psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):
        return None
    for marker in ("launch", "accelerate.commands.launch"):
        if marker in argv[:4]:
            from accelerate.commands.launch import launch_command_parser  # here: it loads torch, needed only now

            try:
                return launch_command_parser().parse_args(argv[argv.index(marker) + 1:])
            except SystemExit:
                return None
    return None


def read_launch_flags(cfg: Config) -> tuple[Config, dict[str, Any]]:
    """(the config with the launch flags it takes over applied, the flags recorded for results.json). Clears the
    environment variables it maps, so that Accelerate does not act on them a second time."""
    record: dict[str, Any] = {}
    args = launcher_args()
    steps = getattr(args, "gradient_accumulation_steps", None) or int(
        os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") or 1)
    if steps != 1:
        cfg = _mapped(cfg, "--gradient_accumulation_steps", "train.micro_batches", steps)
        record["gradient_accumulation_steps"] = steps
    os.environ.pop("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", None)  # else backward() divides the loss by it
    clipping = getattr(args, "gradient_clipping", None)
    if clipping is not None:
        cfg = _mapped(cfg, "--gradient_clipping", "optim.grad_clip", float(clipping))
        record["gradient_clipping"] = float(clipping)
    threads = getattr(args, "num_cpu_threads_per_process", None)
    if threads is not None:
        cfg = _mapped(cfg, "--num_cpu_threads_per_process", "train.cpu_threads", int(threads))
        record["num_cpu_threads_per_process"] = int(threads)
    backend = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper()
    if backend != "NO":
        if backend != "INDUCTOR":
            _refuse(f"accelerate launch --dynamo_backend {backend.lower()}: only inductor is run here",
                    "use --dynamo_backend inductor or train.compile=true")
        for env, (flag, default) in _DYNAMO_DEFAULTS.items():
            if os.environ.get(env, default) != default:
                _refuse(f"accelerate launch {flag} is not run here (the net is five layers, compiled whole)",
                        "drop it; --dynamo_backend inductor or train.compile=true compiles with the defaults")
        if cfg.train.compile:
            _refuse("accelerate launch --dynamo_backend inductor and train.compile=true both compile the model",
                    "give one of them")
        cfg = _mapped(cfg, "--dynamo_backend", "train.compile", True)
        record["dynamo_backend"] = "inductor"
    os.environ["ACCELERATE_DYNAMO_BACKEND"] = "NO"
    for env, name in (("ACCELERATE_DEBUG_MODE", "debug"), ("ACCELERATE_CPU_AFFINITY", "enable_cpu_affinity"),
                      ("ACCELERATE_USE_CPU", "cpu")):
        if _on(env):
            record[name] = True
    return cfg, record
