"""Monitoring: the offline W&B run holds what was logged (read back from its file), W&B goes offline by itself
without a key and never prompts, and the local plots are real PNGs, drawn by a helper process that starts fast
and never outlives its run."""

from __future__ import annotations

import json
import os

import pytest
from conftest import descendants, run_python
from PIL import Image
from wandb_records import artifacts, config, history, read_records, summary

from mnist_sum.tracking.plots import PlotWriter


def _wandb_file(run_dir):
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run in {run_dir}"
    return files


def test_offline_wandb_run_holds_the_logged_metrics(smoke_run):
    run_dir, _ = smoke_run
    (path,) = _wandb_file(run_dir)
    rows = history(path)
    train = [r for r in rows if "train/loss" in r]
    assert [r["_step"] for r in train] == list(range(8, 129, 8))
    for key in ("train/digit_loss", "train/sum_loss", "train/digit_acc", "train/sum_acc", "train/lr",
                "train/samples_per_s", "epoch"):
        assert all(key in r for r in train), key
    local = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in train] == [x["train/loss"] for x in local if "train/loss" in x]
    val = [r for r in rows if "val/digit_acc" in r]
    assert len(val) == 1 and val[0]["_step"] == 128
    # The table of misclassified val examples (32 of them) and both confusion matrices, logged as W&B tables.
    assert val[0]["val/misclassified/_type"] == "table-file" and val[0]["val/misclassified/nrows"] == 32
    assert val[0]["val/misclassified/ncols"] == 6
    assert val[0]["val/confusion_digit_table/nrows"] > 10 and val[0]["val/confusion_sum_table/nrows"] > 19

    results = json.loads((run_dir / "results.json").read_text())
    final = summary(path)
    for key in ("digit_acc", "sum_acc", "joint_acc", "exhaustive_sum_acc", "sum_acc_given_digit"):
        assert final[f"test/{key}"] == pytest.approx(results["test"][key])
    assert final["val/joint_acc"] == {"max": pytest.approx(val[0]["val/joint_acc"])}  # define_metric
    assert final["val/loss"] == {"min": pytest.approx(val[0]["val/loss"])}
    assert results["best_val"]["joint_acc"] == val[0]["val/joint_acc"]  # the selected (only) epoch
    assert final["train_flops"] == results["train_flops"] > 0 and final["train_flops_per_s"] == results["train_flops_per_s"]
    assert config(path)["optim"]["lr"] == 0.001  # the smoke recipe's
    assert config(path)["git"] == results["git"] and len(results["git"]["commit"]) == 40  # provenance in W&B too
    # The run is finished, not cut off: train.py ends its process at once after its outputs are written
    # (commands.exit_now), so the run's exit record must be on disk before that.
    exits = [r.exit.exit_code for r in read_records(path) if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]


def test_final_weights_and_checkpoints_are_wandb_artifacts(smoke_run):
    run_dir, _ = smoke_run
    (path,) = _wandb_file(run_dir)
    run_id = path.stem.removeprefix("run-")
    logged = {a["type"]: a for a in artifacts(path)}
    results = json.loads((run_dir / "results.json").read_text())
    model = logged["model"]
    assert model["name"] == f"model-{run_id}" and sorted(model["aliases"]) == ["best", "latest"]
    assert model["files"] == ["config.yaml", "model.safetensors", "results.json"]
    assert model["metadata"]["test/digit_acc"] == results["test"]["digit_acc"]
    assert model["metadata"]["test/exhaustive_sum_acc"] == results["test"]["exhaustive_sum_acc"]
    checkpoint = logged["checkpoint"]  # checkpoint.wandb_artifacts=true: the one epoch-end checkpoint
    assert checkpoint["name"] == f"checkpoint-{run_id}" and sorted(checkpoint["aliases"]) == ["latest", "step-128"]
    assert "meta.json" in checkpoint["files"] and "model.safetensors" in checkpoint["files"]
    assert checkpoint["metadata"] == {"step": 128}


def test_tensorboard_event_file_holds_the_logged_metrics(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = smoke_run
    (events,) = (run_dir / "tensorboard").glob("*/events.out.tfevents.*")
    board = EventAccumulator(str(events.parent)).Reload()
    local = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train/loss", "val/digit_acc", "val/exhaustive_sum_acc", "test/exhaustive_sum_acc"):
        logged = [(x["step"], x[key]) for x in local if key in x]
        assert [(e.step, e.value) for e in board.Scalars(key)] == [(s, pytest.approx(v)) for s, v in logged], key
    assert len(logged) == 1 and len(board.Scalars("train/loss")) == 16


def test_an_unknown_tracker_is_one_line_with_accelerates_names(tmp_path, capsys):
    from conftest import ROOT, train_in_process

    code, err = train_in_process(["--config", str(ROOT / "configs" / "smoke.yaml"), "tracking.log_with=[wandbb]",
                                  f"run.dir={tmp_path / 'run'}"], capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("mnist-sum: error: tracking.log_with: unknown tracker 'wandbb' (choose from ")
    assert {"wandb", "tensorboard", "mlflow"} <= set(line.split("choose from ")[1].rstrip(")").split(", "))
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_is_one_line(capsys):
    from conftest import ROOT, train_in_process

    code, err = train_in_process(["--config", str(ROOT / "configs" / "smoke.yaml"), "tracking.log_with=[dvclive]"],
                                 capsys)
    assert code == 2
    assert err.strip().splitlines() == ["mnist-sum: error: tracking.log_with lists dvclive, which is not installed here "
                                        "(pip install dvclive, or leave it out of tracking.log_with)"]


def test_without_api_key_or_mode_wandb_goes_offline_without_prompting(tmp_path):
    env = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    code = ("import os, sys; [os.environ.pop(k, None) for k in ('WANDB_MODE', 'WANDB_API_KEY')]; "
            "sys.argv = ['train.py', '--config', 'configs/smoke.yaml', 'data.train_limit=1024', "
            f"'run.dir={tmp_path / 'run'}']; "
            "from mnist_sum.commands import train_main; sys.exit(train_main())")
    result = run_python(["-c", code], extra_env=env, timeout=180)  # stdin is not a terminal: a prompt would fail
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stderr.splitlines() if x.startswith("mnist-sum: W&B"))
    (path,) = _wandb_file(tmp_path / "run")
    assert line == (f"mnist-sum: W&B is logging offline (no W&B API key found); upload later with: "
                    f"wandb sync {path.parent}")


def test_with_a_key_but_no_route_to_the_server_wandb_goes_offline(tmp_path):
    # A key is configured, but the server (here a closed port on this machine) cannot be reached.
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "https://127.0.0.1:9",
           "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    result = run_python(["train.py", "--config", "configs/smoke.yaml", "data.train_limit=1024",
                         f"run.dir={tmp_path / 'run'}"], extra_env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mnist-sum: W&B is logging offline (127.0.0.1 cannot be reached); upload later with: wandb sync" in result.stderr
    assert _wandb_file(tmp_path / "run")


@pytest.mark.slow  # a whole training run of its own (the default pytest's budget: docs/tests.md)
def test_wandb_disabled_writes_no_wandb_files(tmp_path):
    result = run_python(["train.py", "--config", "configs/smoke.yaml", "data.train_limit=1024", "wandb.mode=disabled",
                         f"run.dir={tmp_path / 'run'}"], extra_env={"WANDB_MODE": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "run" / "wandb").exists() and (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", ["loss.png", "accuracy.png", "confusion_digit.png"])
def test_plots_are_valid_pngs(smoke_run, name):
    run_dir, _ = smoke_run
    with Image.open(run_dir / name) as image:
        image.verify()
        assert image.format == "PNG" and image.width > 200 and image.height > 200


def test_the_plot_helper_imports_no_torch():
    # The helper's point is to import matplotlib early, beside the trainer's start-up: torch would cost it seconds.
    result = run_python(["-c", "import sys, mnist_sum.tracking.plots; print(sorted(m for m in sys.modules if 'torch' in m))"])
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_failed_plot_helper_raises_its_last_line(tmp_path):
    with PlotWriter() as plots, pytest.raises(RuntimeError, match=r"the plots could not be drawn: .*metrics\.jsonl"):
        plots.write(tmp_path, [[1] * 10] * 10)  # a run folder without metrics.jsonl


def test_leaving_the_plot_writer_unused_ends_its_helper():
    before = set(descendants(os.getpid()))  # other tests' processes (W&B's service) may live on in this one
    with PlotWriter():
        (helper,) = set(descendants(os.getpid())) - before
    assert helper not in descendants(os.getpid())
