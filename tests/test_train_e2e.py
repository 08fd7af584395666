"""Real end-to-end runs of train.py through `accelerate launch`, on 1 and 2 CPU processes (gloo)."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, child_env, free_port, launch, train_in_process
from torch.utils.flop_counter import FlopCounterMode

from mnist_sum.config import load_config
from mnist_sum.data.dataset import pair_numbers
from mnist_sum.model.network import build_model, sum_loss
from mnist_sum.model.weights import load_weights


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: torch.tensor([int(r[k]) for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def one_process_run(smoke_run):
    return smoke_run


def test_two_process_run_writes_complete_results(two_process_run, mnist):
    run_dir, result = two_process_run
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "accuracy.png", "config.yaml", "confusion_digit.png", "loss.png", "metrics.jsonl", "model.safetensors",
        "results.json", "step_000128", "test_predictions.csv", "wandb"]
    assert result.stdout.count("mnist-sum: run folder") == 1  # only the main process talks
    assert "\r" not in result.stdout + result.stderr  # no progress bar off a terminal: a log holds lines
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2
    # Provenance: the commit the code ran from, and whether the tree differed from it.
    git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: E731
    assert results["git"] == {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    phases = results["phases_s"]  # the session's wall time, phase by phase (bench/fixed_cost.py prints them)
    assert list(phases) == ["setup", "train", "test", "outputs"] and all(v > 0 for v in phases.values())
    assert sum(phases.values()) == pytest.approx(results["wall_time_s"], abs=0.05)
    assert phases["train"] == pytest.approx(results["train_time_s"], abs=0.02)  # not resumed: all of its training
    test = results["test"]
    assert test["num_samples"] == 10000 and test["num_exhaustive_pairs"] == 100000
    val = results["best_val"]  # val is scored exhaustively too: each of its 1,000 images with every number
    assert val["num_samples"] == 1000 and val["num_exhaustive_pairs"] == 10000 and 0 < val["exhaustive_sum_acc"] <= 1
    assert 0.3 < test["digit_acc"] <= 1.0  # the smoke run learns something, far from chance (0.1)

    preds = _read_csv(run_dir / "test_predictions.csv")
    assert preds["index"].tolist() == list(range(10000))  # every test image exactly once
    assert torch.equal(preds["label"], mnist["test"][1])
    assert torch.equal(preds["number"], pair_numbers(0, "test", 0, preds["index"]))
    # results.json agrees with the per-sample predictions it came from
    digit_ok = preds["pred_digit"] == preds["label"]
    sum_ok = preds["pred_sum"] == preds["label"] + preds["number"]
    assert test["digit_acc"] == pytest.approx(digit_ok.double().mean().item())
    assert test["sum_acc"] == pytest.approx(sum_ok.double().mean().item())
    assert test["joint_acc"] == pytest.approx((digit_ok & sum_ok).double().mean().item())


def test_saved_weights_reproduce_the_test_predictions(two_process_run, mnist):
    run_dir, _ = two_process_run
    model = load_weights(run_dir / "model.safetensors")
    preds = _read_csv(run_dir / "test_predictions.csv")
    with torch.no_grad():
        digits, sums = model(mnist["test"][0], preds["number"])
    assert (digits.argmax(-1) == preds["pred_digit"]).double().mean() > 0.999
    assert (sums.argmax(-1) == preds["pred_sum"]).double().mean() > 0.999


def test_metrics_log_counts_steps_and_val(two_process_run):
    run_dir, _ = two_process_run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "train/loss" in x]
    assert [x["step"] for x in train] == list(range(8, 129, 8))  # smoke: 8192 / 64 = 128 steps, log_every 8
    assert all(x["train/samples_per_s"] > 0 for x in train)
    lrs = [x["train/lr"] for x in train]  # one-cycle: warm up to the peak (smoke: 0.001), then anneal to 0
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(0.001, rel=0.2) and lrs[-1] < 1e-6
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    val = [x for x in lines if "val/digit_acc" in x]
    assert len(val) == 1 and val[0]["val/num_samples"] == 1000
    assert any(x.get("test/num_samples") == 10000 for x in lines)


def test_runs_count_the_flops_of_every_training_sample(one_process_run, two_process_run):
    # Counted independently here: forward and backward of the smoke net (same config) on a small real batch.
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    model = build_model(cfg.model).train()
    images, labels = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8), torch.tensor([1, 2, 3, 4])
    with FlopCounterMode(display=False) as counter:
        digit_logits, sum_logits = model(images, labels, noise_key=torch.arange(4))
        sum_loss(digit_logits, sum_logits, labels, labels)[0].backward()
    per_sample = counter.get_total_flops() / 4
    for run_dir, _ in (one_process_run, two_process_run):
        results = json.loads((run_dir / "results.json").read_text())
        assert results["flops_per_sample"] == per_sample  # per sample, whatever the number of processes
        assert results["train_flops"] == per_sample * 128 * 64  # 128 steps of 64 samples
        assert results["train_flops_per_s"] == pytest.approx(results["train_flops"] / results["train_time_s"], rel=1e-2)


def test_one_and_two_processes_score_the_same_pairs(one_process_run, two_process_run):
    one, two = _read_csv(one_process_run[0] / "test_predictions.csv"), _read_csv(two_process_run[0] / "test_predictions.csv")
    assert torch.equal(one["index"], two["index"]) and torch.equal(one["number"], two["number"])
    assert json.loads((one_process_run[0] / "results.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_train_batches_are_identical_with_1_2_and_3_processes(tmp_path):
    # 64 does not split over 3 processes: slices of 22, 21 and 21 samples.
    overrides = ["data.train_limit=1000", "train.global_batch_size=64", "train.seed=3"]
    dumps = {}
    for n in (1, 2, 3):
        out = tmp_path / f"batches{n}.json"
        result = launch(["tests/dump_train_batches.py", str(out), *overrides], num_processes=n)
        assert result.returncode == 0, result.stderr[-3000:]
        dumps[n] = json.loads(out.read_text())
    assert [dumps[n]["world_size"] for n in (1, 2, 3)] == [1, 2, 3]
    assert [dumps[n]["slice_sizes"] for n in (1, 2, 3)] == [[[64]], [[32], [32]], [[22], [21], [21]]]
    # Same global batches, same order, same numbers, dropout keys and warps (exactly: they are hashes, not draws).
    assert dumps[1]["epochs"] == dumps[2]["epochs"] == dumps[3]["epochs"]
    epoch0 = [row for batch in dumps[1]["epochs"][0] for row in batch]
    assert len(epoch0) == 1000 // 64 * 64 and len({row[0] for row in epoch0}) == len(epoch0)
    assert [row[1] for row in epoch0] == pair_numbers(3, "train", 0, [row[0] for row in epoch0]).tolist()
    assert len({row[2] for row in epoch0}) == len(epoch0)  # a dropout key of its own for every sample
    assert dumps[1]["epochs"][0] != dumps[1]["epochs"][1]  # a new order and new numbers each epoch


@pytest.mark.slow
def test_three_processes_train_and_score_every_test_image_once(tmp_path, mnist):
    # 64 samples over 3 processes (22, 21, 21) and 500-image eval batches over 3 (167 per process): neither splits.
    run_dir = tmp_path / "three"
    result = launch(["train.py", "--config", "configs/smoke.yaml", f"run.dir={run_dir}", "wandb.mode=disabled"],
                    num_processes=3)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 3 and results["test"]["num_samples"] == 10000
    assert results["best_val"]["num_samples"] == 1000 and results["test"]["num_exhaustive_pairs"] == 100000
    preds = _read_csv(run_dir / "test_predictions.csv")
    assert preds["index"].tolist() == list(range(10000)) and torch.equal(preds["label"], mnist["test"][1])
    assert results["test"]["digit_acc"] > 0.3


def test_existing_run_folder_is_never_overwritten(one_process_run, capsys):
    run_dir, _ = one_process_run
    before = (run_dir / "results.json").read_bytes()
    code, err = train_in_process(["--config", str(ROOT / "configs" / "smoke.yaml"), f"run.dir={run_dir}"], capsys)
    assert code == 2
    assert "already exists and is not empty" in err
    assert (run_dir / "results.json").read_bytes() == before


def test_a_global_batch_with_fewer_batchnorm_groups_than_processes_is_refused(tmp_path):
    # With ghost BatchNorm each process needs a whole group (16 samples): a global batch of 16 has one.
    result = launch(["train.py", "--config", "configs/smoke.yaml", "model.norm=ghost", "train.global_batch_size=16",
                     f"run.dir={tmp_path / 'r'}"], num_processes=2)
    line = ("mnist-sum: error: train.global_batch_size=16 leaves some of the 2 processes without a BatchNorm group of "
            "16 (model.norm_group) (use train.global_batch_size of at least 32; a smaller model.norm_group also does, "
            "but changes the function trained)")
    assert result.returncode != 0
    assert line in result.stderr.splitlines()
    # torchrun's failure report that follows names the line as the root cause, not "To enable traceback see ...".
    root_cause = result.stderr.split("Root Cause (first observed failure):")[1]
    assert f"traceback : {line}" in root_cause and "To enable traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # bf16 on the CPU: emulated, and 7x slower than fp32, on CPUs without AVX512-BF16 (docs/benchmarks.md)
def test_accelerate_config_file_launches(tmp_path):
    # Exactly the README's command: the config file alone decides processes and precision (bf16).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_config.yaml"),
           "--main_process_port", str(free_port()), "train.py", "--config", "configs/smoke.yaml",
           f"run.dir={tmp_path / 'r'}"]
    result = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["mixed_precision"] == "bf16" and results["world_size"] == 1
    # bf16 autocast on the CPU: the loss stays finite and the accuracy is as sane as in fp32 (about 0.48 here).
    assert results["test"]["num_samples"] == 10000 and results["test"]["digit_acc"] > 0.3
    assert math.isfinite(results["test"]["loss"]) and math.isfinite(results["best_val"]["loss"])


def _raw_idx(name: str, header: int) -> torch.Tensor:
    """An MNIST file read straight from its bytes (not through mnist_sum.data.sources)."""
    data = gzip.decompress((ROOT / "data" / "mnist" / f"{name}.gz").read_bytes())[header:]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def test_metrics_recomputed_from_the_raw_files_equal_results_json(one_process_run):
    # Nothing of mnist_sum.model.scoring: the accuracies from test_predictions.csv and the raw label file, the exhaustive
    # score by running the saved weights over all 100,000 (image, number) pairs.
    run_dir, _ = one_process_run
    test = json.loads((run_dir / "results.json").read_text())["test"]
    labels = _raw_idx("t10k-labels-idx1-ubyte", 8).long()
    images = _raw_idx("t10k-images-idx3-ubyte", 16).view(10000, 28, 28)
    preds = _read_csv(run_dir / "test_predictions.csv")
    assert torch.equal(preds["label"], labels) and preds["index"].tolist() == list(range(10000))
    digit_ok, sum_ok = preds["pred_digit"] == labels, preds["pred_sum"] == labels + preds["number"]
    assert test["num_samples"] == 10000
    assert test["digit_acc"] == int(digit_ok.sum()) / 10000 and test["sum_acc"] == int(sum_ok.sum()) / 10000
    assert test["joint_acc"] == int((digit_ok & sum_ok).sum()) / 10000
    assert test["sum_acc_given_digit"] == pytest.approx(int((digit_ok & sum_ok).sum()) / int(digit_ok.sum()), abs=1e-12)
    model = load_weights(run_dir / "model.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the run computed them (same batches too)
    try:
        with torch.no_grad():
            right = 0
            for chunk, truth in zip(images.split(500), labels.split(500)):  # the smoke recipe's eval batch
                digits = model.digit_logits(chunk)
                for n in range(10):
                    sums = model.sum_logits(digits, torch.full_like(truth, n)).argmax(-1)
                    right += int((sums == truth + n).sum())
    finally:
        torch.set_num_threads(threads)
    assert test["num_exhaustive_pairs"] == 100000 and test["exhaustive_sum_acc"] == right / 100000


def test_the_readmes_first_command_trains_with_no_launch_flags_and_no_accelerate_config(tmp_path):
    # `accelerate launch train.py` exactly: no flags, no config file, and no `accelerate config` default either (a
    # fresh HF_HOME); the smoke recipe through overrides, on the CPU.
    smoke = ["data.val_size=1000", "data.train_limit=8192", "model.channels=[8,16]", "optim.lr=0.001", "train.epochs=1",
             "train.global_batch_size=64", "train.eval_batch_size=500", "train.log_every=8", "wandb.mode=disabled"]
    env = child_env() | {"HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "train.py", *smoke,
                             f"run.dir={tmp_path / 'r'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["mixed_precision"] == "no" and results["world_size"] == 1 and results["device"].startswith("cpu")
    assert results["test"]["num_samples"] == 10000 and results["steps"] == 128
