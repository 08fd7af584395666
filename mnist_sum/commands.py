"""The three commands, `mnist-sum-train` (also `train.py`), `mnist-sum-evaluate` and `mnist-sum-predict`:
argument parsing, and every failure the project can name printed as one line with its exit code.

The library modules they call load torch (seconds). They are imported inside each command, after the
arguments and (for training) the config are read, so that `--help`, a mistyped flag or a config error
answers at once, without torch (docs/benchmarks.md: Start-up).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mnist_sum.config import DEFAULT_CONFIG, PROJECT_ROOT, load_config
from mnist_sum.data.idx_files import read_ahead
from mnist_sum.distributed.launch_flags import check_launch_flags
from mnist_sum.errors import LostPeer, ProjectError, Stopped, UsageError
from mnist_sum.files import write_json
from mnist_sum.launcher import max_restarts, restart_count, tell_launcher


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors in the project's one-line form (exit code 2, as argparse), and `--debug`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    def error(self, message: str) -> NoReturn:
        print(f"mnist-sum: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _say(line: str, every_rank: bool = False) -> None:
    if every_rank or os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


def run_command(command: Callable[[], int | None], debug: bool) -> int:
    """Run `command` (its exit code, or None for 0); a ProjectError or a requested stop becomes one line on
    stderr and its exit code (a traceback instead with --debug)."""
    try:
        code = command()
    except ProjectError as err:
        if debug:
            raise
        # Every process meets the same error and one line is enough; a lost peer is each process's own news.
        _say(err.line(), every_rank=isinstance(err, LostPeer))
        tell_launcher(err.line())
        if os.environ.get("RANK", "0") != "0" and not isinstance(err, LostPeer):
            # The launcher stops every process as soon as one exits: give process 0, which says the line, the time
            # to say it before this one's exit gets it killed.
            time.sleep(2)
        return err.exit_code
    except Stopped as stop:
        _say(stop.line())
        tell_launcher(stop.line())
        return stop.exit_code
    except KeyboardInterrupt:
        print("mnist-sum: interrupted", file=sys.stderr)
        return 130
    return code or 0


def exit_now(code: int) -> NoReturn:
    """End the process as soon as a command is done and its outputs are written: the atexit handlers run (W&B's
    teardown, logging), stdout and stderr are flushed, and the interpreter's teardown of its 3,000 modules (torch
    and its compiler's among them) is skipped: seconds of every run (docs/benchmarks.md: Fixed cost).
    For the console scripts and train.py only: a caller in the same process (the tests) calls the `*_main`."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def train_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="train.py",
        description="Train the two-headed MNIST digit + sum network (run it under `accelerate launch` for "
        "several processes or mixed precision).",
        epilog="example: accelerate launch train.py --config configs/quick.yaml optim.lr=0.004 train.epochs=3",
    )
    parser.add_argument("--config", help=f"YAML config file (default: {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)}, or "
                        "the run folder's config.yaml when resuming)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="auto: continue the run folder (run.dir / run.name) from its newest whole checkpoint, or "
                        "start it if it has none; PATH: continue from that step_* checkpoint folder")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config values")
    args = parser.parse_intermixed_args(argv)  # overrides before and after --resume alike

    def train_command() -> None:
        config_path = Path(args.config or DEFAULT_CONFIG)
        cfg = load_config(config_path, args.overrides)
        if args.resume == "auto" and not (cfg.run.name or cfg.run.dir):
            # Without a name, each start would make a new timestamped folder: nothing would ever be resumed.
            raise UsageError("--resume auto needs to know which run to continue",
                             "name it: run.name=NAME for the folder runs/NAME, or run.dir=PATH; the same at every start")
        check_launch_flags()  # before torch loads: every process refuses at once, before the launcher stops them
        if cfg.data.source == "idx":
            read_ahead(cfg.data.idx_dir)  # the data files are read while torch loads: mnist_sum.data.idx_files says why
        from mnist_sum.train.runs import run_dir_for  # after the config is read: see the module docstring
        from mnist_sum.train.trainer import train

        resume = args.resume
        if restart_count() and resume is None:
            # torchrun restarted the workers after one died: they continue their own run, which keeps its name
            # (a timestamped one included: see launcher.launch_time), from its newest whole checkpoint.
            resume = "auto"
            _say(f"mnist-sum: restart {restart_count()} of at most {max_restarts()} by the launcher: continuing the run "
                 "from its newest whole checkpoint")
        if resume and args.config is None:
            # Resuming without --config: the run's own resolved config is the base the overrides apply to.
            run_dir = run_dir_for(cfg, config_path.stem) if resume == "auto" else Path(resume).parent
            if (run_dir / "config.yaml").is_file():
                cfg = load_config(run_dir / "config.yaml", args.overrides, saved=True)
        train(cfg, config_name=config_path.stem, resume=resume)

    return run_command(train_command, args.debug)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="mnist-sum-evaluate",
                            description="Score saved weights on the MNIST test split: the run's fixed "
                            "(image, number) pairs and every image with every number 0..9.")
    parser.add_argument("target", metavar="RUN_OR_WEIGHTS",
                        help="a run folder, a model.safetensors file or a checkpoint folder (step_*) of a run")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="val: the run's held-out val images, on which it selected its weights")
    parser.add_argument("--out", help="JSON file to write (default: evaluation.json beside the weights; "
                        "for a checkpoint, evaluation_step_N.json in its run folder, which leaves the checkpoint as saved)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's train.eval_batch_size)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"],
                        help="default: the run's own (from its results.json), else no")
    parser.add_argument("--test-shifts", type=int, choices=range(4), metavar="{0,1,2,3}",
                        help="read each image and its shifts of up to N pixels, probabilities averaged (default: the "
                        "run's model.test_shifts; 0, one view, is how val chose the run's epoch)")
    args = parser.parse_args(argv)

    def evaluate_command() -> None:
        from mnist_sum.inference.evaluate import evaluate_weights, report_table  # after parsing: see the module docstring

        report = evaluate_weights(args.target, args.batch_size, args.mixed_precision, args.split, args.test_shifts)
        out = Path(args.out) if args.out else default_evaluation_path(report)
        write_json(out, report)
        print(report_table(report))
        print(f"written: {out}")

    return run_command(evaluate_command, args.debug)


def default_evaluation_path(report: dict) -> Path:
    """evaluation.json beside the weights; a checkpoint's goes beside it, named after it, so the checkpoint
    folder keeps exactly the files its meta.json lists."""
    if report["checkpoint"]:
        checkpoint = Path(report["checkpoint"])
        return checkpoint.with_name(f"evaluation_{checkpoint.name}.json")
    return Path(report["weights"]).with_name("evaluation.json")


def number_0_to_9(text: str) -> int:
    """argparse type of predict's --number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (use 0..9)") from None
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..9")
    return value


def predict_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="mnist-sum-predict", description="Read the digit in each image and add NUMBER to it.")
    parser.add_argument("--weights", required=True, metavar="RUN_OR_WEIGHTS",
                        help="a run folder, a model.safetensors or a step_* checkpoint")
    parser.add_argument("--number", required=True, type=number_0_to_9, help="the integer 0..9 to add")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, ... of any size")
    args = parser.parse_args(argv)

    def predict_command() -> int:
        from mnist_sum.inference.predict import answer_line, predict_files  # after parsing: see the module docstring

        results = predict_files(args.weights, args.number, args.images)
        if args.json:
            print(json.dumps(results, indent=2))
        for r in results:
            if "error" in r:
                print(f"mnist-sum: error: {r['error']}", file=sys.stderr)
            elif not args.json:
                print(answer_line(r))
        # Every file has had its answer above; the exit code tells a script that not all could be read.
        return 2 if any("error" in r for r in results) else 0

    return run_command(predict_command, args.debug)


def train_cli() -> NoReturn:
    exit_now(train_main())


def evaluate_cli() -> NoReturn:
    exit_now(evaluate_main())


def predict_cli() -> NoReturn:
    exit_now(predict_main())
