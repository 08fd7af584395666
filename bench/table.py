"""Summarise finished runs as one Markdown table: time, compute, throughput, time to 99% and test accuracy.

    python bench/table.py runs/quick runs/default            # one row per run
    python bench/table.py --mean runs/default-seed*           # plus mean ± std and min rows over the runs given
    python bench/table.py --peak-tflops 989 runs/gpu-*         # a speed table: TFLOP/s, MFU, peak memory

Time to 99% is the training time at the first validation where both heads reached 99% on val. Training
FLOPs are the model's forward and backward over every training sample (counted by the run itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's reader, not an installed one's
from mnist_sum.train.results import read_results  # noqa: E402

COLUMNS = ("digit_acc", "sum_acc", "exhaustive_sum_acc", "sum_acc_given_digit")


def summarise(run_dir: Path) -> dict:
    results = read_results(run_dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [x["train/samples_per_s"] for x in lines if "train/samples_per_s" in x][1:]
    to_99 = next((x["train/elapsed_s"] for x in lines if "val/digit_acc" in x
                  and min(x["val/digit_acc"], x["val/sum_acc"]) >= 0.99), None)
    precision = {"no": "fp32"}.get(results["mixed_precision"], results["mixed_precision"])
    return {"run": run_dir.name, "precision": precision, "device": results["device"],
            "world_size": results["world_size"], "wall_s": results["wall_time_s"], "train_s": results["train_time_s"],
            "samples_per_s": statistics.median(rates) if rates else float("nan"), "to_99_s": to_99,
            "train_flops": results.get("train_flops", float("nan")),
            "gflops_per_s": results.get("train_flops_per_s", float("nan")) / 1e9,
            # The steps' own rate: the median window's samples/s times the FLOPs per sample (train_flops_per_s
            # divides by train_time_s, which holds the validations, checkpoints and a compile too).
            "step_tflops": (statistics.median(rates) if rates else float("nan"))
            * results.get("flops_per_sample", float("nan")) / 1e12,
            "peak_memory_mb": results.get("peak_memory_mb", float("nan")), "skipped_steps": results.get("skipped_steps", 0),
            **{k: results["test"][k] for k in COLUMNS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--mean", action="store_true", help="add mean ± std and min rows")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak: print the speed table instead")
    args = parser.parse_args()
    rows = [summarise(r) for r in args.runs]
    if args.peak_tflops:
        speed_table(rows, args.peak_tflops)
        return
    print(f"# {rows[0]['device']}, {rows[0]['world_size']} process(es)")
    print("| run | precision | wall | train | train FLOPs | GFLOP/s | samples/s | to 99% (val) | digit | sum | "
          "exhaustive sum | sum, digit right |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        to_99 = f"{r['to_99_s']:.0f} s" if r["to_99_s"] is not None else "-"
        print(f"| {r['run']} | {r['precision']} | {r['wall_s']:.0f} s | {r['train_s']:.0f} s | {r['train_flops']:.2e} | "
              f"{r['gflops_per_s']:.0f} | {r['samples_per_s']:,.0f} | {to_99} | "
              + " | ".join(f"{100 * r[k]:.2f}%" for k in COLUMNS) + " |")
    if args.mean and len(rows) > 1:
        def ms(key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
            values = [scale * r[key] for r in rows]
            return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"
        print(f"| mean ± std of {len(rows)} | | {ms('wall_s', fmt='.0f')} s | {ms('train_s', fmt='.0f')} s | | | | | "
              + " | ".join(ms(k, 100) + "%" for k in COLUMNS) + " |")
        print(f"| min of {len(rows)} | | | | | | | | " + " | ".join(f"{100 * min(r[k] for r in rows):.2f}%" for k in COLUMNS)
              + " |")


def speed_table(rows: list[dict], peak_tflops: float) -> None:
    """Throughput against the device's peak: MFU = achieved model FLOP/s of the training steps (the median log
    window's samples/s times the FLOPs per sample the run counted, forward and backward) over the dense peak of
    the precision the peak is given for."""
    print(f"# {rows[0]['device']}, {rows[0]['world_size']} process(es); MFU against {peak_tflops:g} TFLOP/s")
    print("| run | precision | train | samples/s | TFLOP/s | MFU | peak memory | skipped steps | to 99% (val) | digit | sum |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        to_99 = f"{r['to_99_s']:.1f} s" if r["to_99_s"] is not None else "-"
        tflops = r["step_tflops"]
        print(f"| {r['run']} | {r['precision']} | {r['train_s']:.1f} s | {r['samples_per_s']:,.0f} | {tflops:.2f} | "
              f"{tflops / peak_tflops:.2%} | {r['peak_memory_mb']:,.0f} MiB | {r['skipped_steps']} | {to_99} | "
              f"{100 * r['digit_acc']:.2f}% | {100 * r['sum_acc']:.2f}% |")


if __name__ == "__main__":
    main()
