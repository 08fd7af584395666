"""bench/gpu_check.sh, as far as a CPU can take it: its refusal without CUDA, its judges on a real run's files,
and its dress rehearsal (`--cpu`: every stage through the same limits, judges, archive and table). What only a
GPU shows (CUDA's sync-debug mode, fp16's grad scaler, NCCL) is the script's own run on a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import ROOT, child_env

sys.path.insert(0, str(ROOT / "bench"))
import gpu_judge  # noqa: E402


def gpu_check(args: list[str], timeout: int, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # The script calls `python3`, as on the GPU machine: here, this interpreter's (the floor environment's in CI).
    env = child_env() | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"} | (extra_env or {})
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_without_cuda_it_refuses_in_one_line_and_still_packs(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    result = gpu_check([str(tmp_path)], timeout=120)
    assert result.returncode == 2
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: error: CUDA is not usable: torch ") and "--cpu" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.tar.gz", "summary.txt"]
    assert (tmp_path / "summary.txt").read_text().strip() == last


def test_the_run_judge_fails_what_a_bad_run_would_show(smoke_run):
    results = json.loads((smoke_run[0] / "results.json").read_text())
    digit, worst = results["test"]["digit_acc"], min(results["test"]["digit_acc"], results["test"]["sum_acc"])
    assert gpu_judge.run_problems(results, "cpu", results["mixed_precision"], worst - 0.001) == []
    assert gpu_judge.run_problems(results, "cpu", results["mixed_precision"], worst + 0.001) == [f"below {worst + 0.001:.1%}"]
    # The smoke run is on the CPU in fp32: each of these is what a quietly wrong GPU run would look like.
    assert gpu_judge.run_problems(results, "cuda", results["mixed_precision"], 0.0) == ["not on cuda"]
    assert gpu_judge.run_problems(results, "cpu", "bf16", 0.0) == [f"precision {results['mixed_precision']}, not bf16"]
    assert gpu_judge.run_problems(results, "cpu", results["mixed_precision"], 0.999) == ["below 99.9%"]
    other = json.loads(json.dumps(results))
    other["test"]["digit_acc"] = digit - 0.003
    assert gpu_judge.run_problems(results, "cpu", results["mixed_precision"], 0.0, other, 0.002) == [
        "0.30% from the other run, over 0.20%"]
    assert gpu_judge.run_problems(results, "cpu", results["mixed_precision"], 0.0, other, 0.004) == []
    assert gpu_judge.main(["run", str(smoke_run[0]), "cuda", results["mixed_precision"], "0"]) == 1


def test_the_sync_free_judge_wants_every_step_no_read_and_each_stop_check():
    good = {"steps": 150, "seen": [], "calls": {"agreed": 3}}
    assert gpu_judge.sync_free_problems(good, 150, 50) == []
    assert gpu_judge.sync_free_problems(good | {"steps": 149}, 150, 50) == ["149 steps recorded, not 150"]
    assert gpu_judge.sync_free_problems(good | {"seen": ["item"]}, 150, 50) == ["host reads between log steps: ['item']"]
    assert gpu_judge.sync_free_problems(good | {"calls": {}}, 150, 50) == ["stop checks None, not 3"]


def test_first_differing_step_names_the_first_logged_step_whose_loss_differs(tmp_path):
    for name, losses in (("whole", [0.9, 0.5, 0.3]), ("resumed", [0.9, 0.5, 0.31])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": 50 * (i + 1), "train/loss": x}) + "\n" for i, x in enumerate(losses))
            + json.dumps({"step": 150, "val/digit_acc": 0.9}) + "\n")
    assert gpu_judge.first_differing_step(tmp_path / "whole", tmp_path / "resumed") == 150
    assert gpu_judge.first_differing_step(tmp_path / "whole", tmp_path / "whole") is None


@pytest.mark.slow  # every stage of the GPU proof on tiny runs (2-3 minutes on 2 cores, docs/tests.md)
def test_the_cpu_rehearsal_passes_every_stage_and_returns_three_files(tmp_path):
    (tmp_path / "stale.txt").write_text("a rerun overwrites what the script writes, and leaves the rest")
    (tmp_path / "summary.txt").write_text("an earlier run's summary")
    # The script's budget is the GPU's one run (480 s); a CPU may take longer for the same stages, and a stage
    # skipped for the GPU's budget is not what the rehearsal proves.
    result = gpu_check(["--cpu", str(tmp_path)], timeout=1500, extra_env={"GPU_CHECK_BUDGET_S": "1200"})
    assert result.returncode == 0, result.stdout[-4000:]
    lines = result.stdout.strip().splitlines()
    # A CPU that emulates bf16 (no AVX512-BF16, AMX-BF16 or ARM's BF16) rehearses the bf16 stages in fp32.
    emulated = not re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", Path("/proc/cpuinfo").read_text())
    skipped = "4 skipped (fp16 bf16 sync-debug nccl)" if emulated else "3 skipped (fp16 sync-debug nccl)"
    assert lines[-1].startswith(f"gpu_check: 9 passed, 0 failed, {skipped}"), lines[-1]
    summary = (tmp_path / "summary.txt").read_text()
    assert "earlier run" not in summary and summary.strip().splitlines()[-1] == lines[-1]
    for check in ("quick-bf16", "default-bf16", "quick-no", "sync-free-bf16", "sync-free-no",
                  "kill-and-resume", "gloo-2", "gloo-restart", "quick-bf16-compiled"):
        assert any(line.startswith(f"ok      {check} (") for line in summary.splitlines()), check
    assert "byte-identical" in summary and "steps 150, host reads seen 0" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.tar.gz", "stale.txt", "summary.txt", "table.md"]
    table = (tmp_path / "table.md").read_text()
    for run in ("quick-bf16", "quick-bf16-compiled", "quick-no", "default-bf16"):
        assert f"| {run} | " in table
    with tarfile.open(tmp_path / "gpu_check.tar.gz") as archive:
        names = archive.getnames()
    assert "./logs/versions.log" in names and "./table.md" in names
    for run in ("quick-bf16", "default-bf16", "gloo-2", "gloo-restart", "resume-killed"):
        assert f"./{run}/results.json" in names, run
    # Every checkpoint of the killed run is kept, so the kill's moment cannot have been pruned away.
    assert "./resume-killed/step_000050" in names and "./resume-killed/step_000100" in names
