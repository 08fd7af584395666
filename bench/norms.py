"""The training step's speed under each normalisation `model.norm` offers, side by side.

    python bench/norms.py                                    # quick and default recipes, fp32 and bf16
    python bench/norms.py --config configs/default.yaml --precision no

One process per (recipe, precision), as train.py runs: train.py's `train_step` on the same batches for each
normalisation (ghost BatchNorm, LayerNorm, none), in alternating windows so all see the machine in the same
moments; the median samples/s of each. Accuracy is not measured here: docs/distributed.md has each
candidate's val accuracy from real runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NORMS = ("ghost", "layer", "none")


def rates(config: str, precision: str) -> dict[str, float]:
    import dataclasses

    from bench.speed import alternate, setup

    accelerator, cfg, sync, stream, make_step = setup(config, precision)
    steps = {}
    for norm in NORMS:  # make_step builds the network of cfg.model as it is when called
        cfg.model = dataclasses.replace(cfg.model, norm=norm)
        steps[norm] = make_step()
    return alternate(steps, stream, cfg.train.global_batch_size, sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["configs/quick.yaml", "configs/default.yaml"])
    parser.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=["no", "bf16", "fp16"])
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        return print(json.dumps(rates(args.config[0], args.precision[0])))
    import torch

    print(f"# train_step samples/s, median of alternating windows; torch {torch.__version__}")
    print(f"| recipe | precision | {' | '.join(NORMS)} |\n|---|---|{'---|' * len(NORMS)}")
    for config in args.config:
        for precision in args.precision:
            cmd = [sys.executable, __file__, "--config", config, "--precision", precision, "--row"]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            cells = " | ".join(f"{got[n]:,.0f} ({got[n] / got[NORMS[0]]:.2f})" for n in NORMS)
            print(f"| {Path(config).stem} | {'fp32' if precision == 'no' else precision} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
