"""Command-line plumbing shared by the entry points: argument parsing and one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mnist_sum.errors import Stopped, UsageError
from mnist_sum.sources import PROJECT_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors in the project's one-line form (exit code 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        print(f"mnist-sum: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[], object], debug: bool) -> int:
    """Run `main`; a UsageError becomes one line on stderr and exit code 2 (a traceback only with --debug)."""
    try:
        main()
    except UsageError as err:
        if debug:
            raise
        # Every process hits the same error; one line is enough.
        if os.environ.get("RANK", "0") == "0":
            print(err.line(), file=sys.stderr)
        return 2
    except Stopped as stop:
        if os.environ.get("RANK", "0") == "0":
            print(stop, file=sys.stderr)
        return stop.exit_code
    except RuntimeError as err:
        from mnist_sum.distributed import lost_peer

        if debug or not lost_peer(err):
            raise
        first = str(err).strip().splitlines()[0][:200]
        print(f"mnist-sum: error: process {os.environ.get('RANK', '?')} lost contact with the other processes: {first} "
              "(see the other processes' output for the cause; continue with --resume auto)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mnist-sum: interrupted", file=sys.stderr)
        return 130
    return 0


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
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config values")
    args = parser.parse_args(argv)

    def main() -> None:
        # Imported late so `--help` and config errors answer without loading torch and Accelerate.
        from mnist_sum.config import load_config
        from mnist_sum.runs import run_dir_for
        from mnist_sum.trainer import train

        config_path = Path(args.config or DEFAULT_CONFIG)
        cfg = load_config(config_path, args.overrides)
        if args.resume and args.config is None:
            # Resuming without --config: the run's own resolved config is the base the overrides apply to.
            run_dir = run_dir_for(cfg, config_path.stem) if args.resume == "auto" else Path(args.resume).parent
            if (run_dir / "config.yaml").is_file():
                cfg = load_config(run_dir / "config.yaml", args.overrides)
        train(cfg, config_name=config_path.stem, resume=args.resume)

    return run_cli(main, args.debug)
