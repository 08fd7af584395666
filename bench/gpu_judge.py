"""bench/gpu_check.sh's judges: what a check's files must show for it to pass, beyond its exit code.

    python bench/gpu_judge.py run RUN_DIR DEVICE PRECISION FLOOR [OTHER_RUN_DIR MAX_GAP]
    python bench/gpu_judge.py sync-free SUMMARY_JSON STEPS LOG_EVERY
    python bench/gpu_judge.py first-diff WHOLE_RUN_DIR RESUMED_RUN_DIR

Each prints one line of what it read (the check's line in the summary) and exits 1 when something is wrong.
Plain Python and json only: it runs on the GPU machine's own interpreter beside the checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_problems(results: dict, device: str, precision: str, floor: float, other: dict | None = None,
                 max_gap: float = 0.0) -> list[str]:
    """What is wrong with a finished run's results.json: the wrong device (a CPU-only torch trains quietly),
    the wrong precision, a head below `floor`, or a digit accuracy more than `max_gap` from `other`'s."""
    test, problems = results["test"], []
    if not results["device"].startswith(device):
        problems.append(f"not on {device}")
    if results["mixed_precision"] != precision:
        problems.append(f"precision {results['mixed_precision']}, not {precision}")
    if min(test["digit_acc"], test["sum_acc"]) < floor:
        problems.append(f"below {floor:.1%}")
    if other is not None:
        gap = abs(test["digit_acc"] - other["test"]["digit_acc"])
        if gap > max_gap:
            problems.append(f"{gap:.2%} from the other run, over {max_gap:.2%}")
    return problems


def run_line(results: dict) -> str:
    test = results["test"]
    return (f"{results['device']}, {results['mixed_precision']}, digit {test['digit_acc']:.2%} sum {test['sum_acc']:.2%}, "
            f"skipped steps {results['skipped_steps']}, {results['train_time_s']:.0f} s")


def sync_free_problems(summary: dict, steps: int, log_every: int) -> list[str]:
    """tests/host_reads_check.py's summary, judged as tests/test_host_reads.py judges it: every step recorded, no
    host read between log steps, and each stop check agreed on at a log step (one per log_every window)."""
    problems = []
    if summary["steps"] != steps:
        problems.append(f"{summary['steps']} steps recorded, not {steps}")
    if summary["seen"]:
        problems.append(f"host reads between log steps: {summary['seen'][:3]}")
    if summary["calls"].get("agreed") != steps // log_every:
        problems.append(f"stop checks {summary['calls'].get('agreed')}, not {steps // log_every}")
    return problems


def first_differing_step(whole: Path, resumed: Path) -> int | None:
    """The first logged step whose train loss differs between an uninterrupted run and a killed-and-resumed one."""
    def losses(run: Path) -> dict[int, float]:
        lines = (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip())
        return {x["step"]: x["train/loss"] for x in lines if "train/loss" in x}
    a, b = losses(whole), losses(resumed)
    return next((s for s in sorted(a) if a[s] != b.get(s)), None)


def main(argv: list[str]) -> int:
    what, args = argv[0], argv[1:]
    if what == "run":
        results = json.loads((Path(args[0]) / "results.json").read_text())
        other = json.loads((Path(args[4]) / "results.json").read_text()) if len(args) > 4 else None
        problems = run_problems(results, args[1], args[2], float(args[3]), other, float(args[5]) if other else 0.0)
        print(run_line(results) + ("" if not problems else " -- " + "; ".join(problems)))
    elif what == "sync-free":
        summary = json.loads(Path(args[0]).read_text())
        problems = sync_free_problems(summary, int(args[1]), int(args[2]))
        print(f"steps {summary['steps']}, host reads seen {len(summary['seen'])}, calls {summary['calls']}"
              + ("" if not problems else " -- " + "; ".join(problems)))
    elif what == "first-diff":
        problems = ["differ"]
        print(f"model.safetensors differ; first logged step whose train loss differs: "
              f"{first_differing_step(Path(args[0]), Path(args[1]))}")
    else:
        sys.exit(f"gpu_judge: unknown judge {what!r} (run, sync-free or first-diff)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
