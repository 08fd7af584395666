"""Command-line plumbing shared by the entry points: argument parsing and one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mnist_sum.errors import UsageError
from mnist_sum.sources import PROJECT_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


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
    except KeyboardInterrupt:
        print("mnist-sum: interrupted", file=sys.stderr)
        return 130
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train the two-headed MNIST digit + sum network (run it under `accelerate launch` for "
        "several processes or mixed precision).",
        epilog="example: accelerate launch train.py --config configs/quick.yaml optim.lr=0.004 train.epochs=3",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config file (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config values")
    args = parser.parse_args(argv)

    def main() -> None:
        # Imported late so `--help` and config errors answer without loading torch and Accelerate.
        from mnist_sum.config import load_config
        from mnist_sum.trainer import train

        cfg = load_config(args.config, args.overrides)
        train(cfg, config_name=Path(args.config).stem)

    return run_cli(main, args.debug)
