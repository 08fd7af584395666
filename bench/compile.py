"""torch.compile against eager on train.py's own step (bench/speed.py's set-up): speed and compile time.

    python bench/compile.py --config configs/quick.yaml --precision bf16
    python bench/compile.py --config configs/default.yaml --precision no

In one fresh process, on the device Accelerate picks: the first step of each (the compiled one compiles), then
alternating windows of both. Prints one line per mode.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import alternate, setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quick.yaml")
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()
    accelerator, cfg, sync, stream, make_step = setup(args.config, args.precision)
    steps, first = {"eager": make_step(), "compiled": make_step(compiled=True)}, {}
    for mode, step in steps.items():
        started = time.perf_counter()
        for batch in itertools.islice(stream, 1):
            step(batch)
        sync()
        first[mode] = time.perf_counter() - started
    for mode, rate in alternate(steps, stream, cfg.train.global_batch_size, sync, rounds=5).items():
        print(f"{args.config} {args.precision} {mode}: first step {first[mode]:.1f} s, then {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()
