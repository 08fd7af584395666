"""The commands: evaluate and predict on real runs and real MNIST images saved as files, and the installed
console scripts (mnist-sum-train does what train.py does)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, child_env, launch, run_python, run_script
from PIL import Image, ImageOps

from mnist_sum.commands import predict_main


def test_evaluate_reproduces_results_json(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    out = tmp_path / "evaluation.json"
    result = run_script("mnist-sum-evaluate", [str(run_dir), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    expected = json.loads((run_dir / "results.json").read_text())["test"]
    assert report["test"] == expected  # same pairs, precision and batch size: the same numbers exactly
    assert "digit" in result.stdout and "10,000" in result.stdout and "100,000" in result.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small model trained well enough (about 95% on both heads) to read clear digits: 2 epochs of a narrow net,
    fp32 (bf16 is 7x slower than fp32 on CPUs without AVX512-BF16, docs/benchmarks.md; tests/test_train_e2e.py
    runs bf16 on the smoke recipe)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    env = child_env()
    result = subprocess.run([sys.executable, "train.py", "--config", "configs/smoke.yaml", "data.train_limit=24000",
                             "model.channels=[16,32]", "model.sum_hidden=128", "augment.enabled=false", "train.epochs=2",
                             "optim.lr=0.003", "train.global_batch_size=128",
                             "wandb.mode=disabled", f"run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run_dir / "results.json").read_text())["test"]["joint_acc"] > 0.9
    return run_dir


def test_a_trained_sum_head_adds(trained_run):
    # The bilinear head, trained: where the digit is read right, the sum is right too (all but a few in 10,000).
    test = json.loads((trained_run / "results.json").read_text())["test"]
    assert test["digit_acc"] > 0.95 and test["sum_acc_given_digit"] >= 0.999


def test_the_saved_weights_are_those_of_the_most_accurate_val_epoch(trained_run, tmp_path):
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    joint = [x["val/joint_acc"] for x in lines if "val/joint_acc" in x]
    best = json.loads((trained_run / "results.json").read_text())["best_val"]
    # The most val samples right on both heads; a tie goes to the later epoch.
    assert len(joint) == 2 and best["epoch"] == len(joint) - joint[::-1].index(max(joint))
    # The saved weights (which scored the test split) score exactly the selected epoch's val metrics, read as val
    # read them: one view each.
    out = tmp_path / "val.json"
    result = run_script("mnist-sum-evaluate", [str(trained_run), "--split", "val", "--test-shifts", "0",
                                               "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MNIST val images" in result.stdout
    rescored = json.loads(out.read_text())["val"]
    assert rescored["loss"] == pytest.approx(best["loss"], rel=1e-6)
    assert rescored["joint_acc"] == best["joint_acc"] and rescored["num_samples"] == best["num_samples"]


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """Two processes, 16 steps, a checkpoint every 8: step_000008 is saved before the first validation (its
    best.safetensors is empty), step_000016 after it."""
    run_dir = tmp_path_factory.mktemp("checkpointed") / "run"
    result = launch(["train.py", "--config", "configs/smoke.yaml", "data.train_limit=1024", "checkpoint.every_steps=8",
                     "checkpoint.keep_last=2", "wandb.mode=disabled", f"run.dir={run_dir}"], num_processes=2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000008", "step_000016"]
    return run_dir


def test_evaluate_scores_a_checkpoint_as_its_run_would_test_it(checkpointed_run):
    step = checkpointed_run / "step_000016"
    files = sorted(p.name for p in step.iterdir())
    result = run_script("mnist-sum-evaluate", [str(step)])
    assert result.returncode == 0, result.stderr[-2000:]
    out = checkpointed_run / "evaluation_step_000016.json"  # beside the checkpoint, which stays as it was saved
    assert f"written: {out}" in result.stdout and sorted(p.name for p in step.iterdir()) == files
    report = json.loads(out.read_text())
    assert report["weights"] == str(step / "best.safetensors") and report["checkpoint"] == str(step)
    # The kept weights at the run's last step are the ones it tested: the same answers on every test pair.
    tested = json.loads((checkpointed_run / "results.json").read_text())["test"]
    for key in ("digit_acc", "sum_acc", "joint_acc", "exhaustive_sum_acc", "num_samples"):
        assert report["test"][key] == tested[key], key


def test_a_checkpoint_before_any_validation_scores_its_network(checkpointed_run, tmp_path):
    step = checkpointed_run / "step_000008"
    out = tmp_path / "early.json"
    result = run_script("mnist-sum-evaluate", [str(step), "--split", "val", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["weights"] == str(step / "model.safetensors")  # the network, as Accelerate saved it
    later = json.loads((checkpointed_run / "results.json").read_text())["best_val"]
    assert report["val"]["num_samples"] == later["num_samples"] == 1000
    assert report["val"]["loss"] > later["loss"]  # 8 steps in: worse than the network after 16


def test_predict_reads_a_checkpoint_like_the_finished_run(checkpointed_run, mnist, tmp_path, capsys):
    paths = []
    for index in range(4):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(mnist["test"][0][index].numpy()).save(paths[-1])
    answers = []
    for weights in (checkpointed_run, checkpointed_run / "step_000016"):
        assert predict_main(["--weights", str(weights), "--number", "4", "--json", *map(str, paths)]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] == answers[1]


def test_an_unfinished_run_points_to_its_newest_checkpoint(checkpointed_run, tmp_path, capsys):
    run = tmp_path / "run"  # a run still training: checkpoints, no model.safetensors yet
    for name in ("step_000008", "step_000016"):
        shutil.copytree(checkpointed_run / name, run / name)
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    assert predict_main(["--weights", str(run), "--number", "1", str(image)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mnist-sum: error: run {run} has not finished: it has no model.safetensors yet "
        f"(score its newest checkpoint: {run / 'step_000016'})"]


def test_a_damaged_checkpoint_is_named_not_misread(checkpointed_run, tmp_path, capsys):
    step = tmp_path / "run" / "step_000016"
    shutil.copytree(checkpointed_run / "step_000016", step)
    shutil.copy(checkpointed_run / "config.yaml", step.parent)
    data = bytearray((step / "best.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (step / "best.safetensors").write_bytes(bytes(data))
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    assert predict_main(["--weights", str(step), "--number", "1", str(image)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mnist-sum: error: checkpoint {step} is damaged: best.safetensors is damaged (checksum mismatch) "
        "(use another step_* folder of the run, or the run folder once it has finished)"]


def _right_pairs(run_dir, count):
    """Test images whose digit and sum the run got right, with their number."""
    with open(run_dir / "test_predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["pred_digit"] == r["label"]
                and int(r["pred_sum"]) == int(r["label"]) + int(r["number"])]
    return [(int(r["index"]), int(r["label"]), int(r["number"])) for r in rows[:count]]


def test_predict_reads_real_mnist_images_as_files(trained_run, mnist, tmp_path, capsys):
    images = mnist["test"][0]
    for index, label, number in _right_pairs(trained_run, 5):
        plain = tmp_path / f"{index}.png"
        Image.fromarray(images[index].numpy()).save(plain)
        # The same digit as a person might have it: dark ink on white paper, 200x200, RGB JPEG.
        photo = tmp_path / f"{index}_big.jpg"
        ImageOps.invert(Image.fromarray(images[index].numpy())).resize((200, 200), Image.Resampling.BICUBIC).convert(
            "RGB").save(photo, quality=95)
        # In process (the console script itself is run below): the same command, without 2 s of start-up each.
        assert predict_main(["--weights", str(trained_run), "--number", str(number), "--json", str(plain),
                             str(photo)]) == 0
        for answer in json.loads(capsys.readouterr().out):
            assert (answer["digit"], answer["sum"]) == (label, label + number), (answer, index)
            assert 0.2 < answer["digit_prob"] <= 1 and 0.2 < answer["sum_prob"] <= 1  # well above chance (0.1, 0.05)


def test_predict_prints_one_line_per_image(trained_run, mnist, tmp_path):
    index, label, number = _right_pairs(trained_run, 1)[0]
    path = tmp_path / "digit.png"
    Image.fromarray(mnist["test"][0][index].numpy()).save(path)
    result = run_script("mnist-sum-predict", ["--weights", str(trained_run / "model.safetensors"), "--number",
                                              str(number), str(path)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{path}: digit {label} (")
    assert f"{label} + {number} = {label + number} (" in result.stdout


def test_predict_prints_no_sum_the_net_did_not_add(smoke_run, mnist, tmp_path, capsys):
    """The smoke run's sum head has had 128 steps: on most test images it settles on another digit than the
    digit head, the case a trained one meets on near ties. The line must not print that as addition."""
    run_dir = smoke_run[0]
    with open(run_dir / "test_predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if int(r["pred_sum"]) != int(r["pred_digit"]) + int(r["number"])]
    assert rows, "the smoke run's heads agree everywhere: pick an image where they do not"
    row = rows[0]
    digit, number, total = int(row["pred_digit"]), int(row["number"]), int(row["pred_sum"])
    path = tmp_path / "digit.png"
    Image.fromarray(mnist["test"][0][int(row["index"])].numpy()).save(path)
    assert predict_main(["--weights", str(run_dir), "--number", str(number), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    read = (f"the sum head read the digit as {total - number}" if 0 <= total - number <= 9
            else f"no digit plus {number} makes {total}")
    percent = r"\(\d+\.\d%\)"
    assert re.fullmatch(rf"{re.escape(str(path))}: digit {digit} {percent}, sum {total} {percent} with {number}: "
                        + re.escape(read), line), line


def test_predict_keeps_the_view_the_net_is_surer_of(trained_run, tmp_path, capsys):
    """A condensed digit is read as framed and widened (framing.mnist_views); predict answers from the view whose
    digit the net reads most surely, sum included."""
    sys.path.insert(0, str(ROOT / "bench"))
    from outside_digits import hand_fonts  # the benchmark's own drawing of the face

    from mnist_sum.data.framing import mnist_views
    from mnist_sum.inference.saved import open_saved

    paths = []
    for i, image in enumerate(hand_fonts("select")[0][:40:4]):  # Amatic SC bold: every digit, two sizes
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    assert predict_main(["--weights", str(trained_run), "--number", "2", "--json", *map(str, paths)]) == 0
    answers = json.loads(capsys.readouterr().out)
    model, two_views = open_saved(str(trained_run)).model, 0
    for path, answer in zip(paths, answers):
        views = mnist_views(Image.open(path))
        two_views += len(views) == 2
        with torch.no_grad():
            probs = model(torch.from_numpy(np.stack(views)), torch.full((len(views),), 2))[0].float().softmax(-1)
        surest = int(probs.amax(-1).argmax())
        assert answer["digit"] == int(probs[surest].argmax()), (path, answer, probs)
        assert answer["digit_prob"] == pytest.approx(float(probs[surest].max()), abs=1e-5)
    assert two_views >= 5, f"only {two_views} of {len(paths)} Amatic SC digits were read widened too"


@pytest.mark.parametrize("number, words", [("10", "10 is outside 0..9"), ("-1", "-1 is outside 0..9"),
                                           ("3.5", "'3.5' is not an integer")])
def test_predict_refuses_numbers_outside_0_to_9(smoke_run, number, words, tmp_path, capsys):
    path = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(path)
    with pytest.raises(SystemExit) as exit_:
        predict_main(["--weights", str(smoke_run[0]), "--number", number, str(path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().startswith("mnist-sum: error: argument --number: " + words)


def test_predict_refuses_files_that_are_not_images(smoke_run, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(blank)
    for path, words in [(text, "is not a readable image"), (empty, "is not a readable image"),
                        (tmp_path / "x.txt", "unknown image type '.txt'"), (blank, "the image is blank")]:
        assert predict_main(["--weights", str(smoke_run[0]), "--number", "3", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err


def test_every_file_gets_its_answer_and_a_failed_one_its_own_line(trained_run, mnist, tmp_path, capsys):
    (index, label, number), (index2, label2, _) = _right_pairs(trained_run, 2)
    good, good2 = tmp_path / "good.png", tmp_path / "good2.png"
    Image.fromarray(mnist["test"][0][index].numpy()).save(good)
    # The same digit on grey paper: refused as blank before framing looked past the border.
    Image.fromarray((128 + mnist["test"][0][index2].numpy() // 2).astype("uint8")).save(good2)
    text, blank = tmp_path / "notes.png", tmp_path / "blank.png"
    text.write_text("not an image")
    Image.new("L", (50, 50), 200).save(blank)
    paths = [good, text, good2, blank]
    assert predict_main(["--weights", str(trained_run), "--number", str(number), *map(str, paths)]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{good}: digit {label} (") and lines[1].startswith(f"{good2}: digit {label2} (")
    assert err.splitlines() == [
        f"mnist-sum: error: {text} is not a readable image (pass a PNG or JPEG file)",
        f"mnist-sum: error: {blank}: the image is blank (no digit found) (pass an image with a digit in it)"]
    assert predict_main(["--weights", str(trained_run), "--number", str(number), "--json", *map(str, paths)]) == 2
    answers = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in answers] == list(map(str, paths))
    assert [("error" in a) for a in answers] == [False, True, False, True]
    assert answers[1]["error"] == f"{text} is not a readable image (pass a PNG or JPEG file)"


def test_the_console_scripts_answer_help_and_mistakes_without_training(tmp_path):
    # mnist-sum-train is train.py: the same parser, the same one-line errors, nothing created for a bad config.
    script, plain = run_script("mnist-sum-train", ["--help"]), run_python(["train.py", "--help"])
    assert script.returncode == plain.returncode == 0 and script.stdout == plain.stdout
    assert "--resume auto|PATH" in script.stdout and "--debug" in script.stdout
    typo = run_script("mnist-sum-train", ["optim.lrr=1", f"run.dir={tmp_path / 'r'}"])
    assert typo.returncode == 2 and not (tmp_path / "r").exists()
    assert typo.stderr.strip().splitlines() == ["mnist-sum: error: unknown config key 'optim.lrr' (did you mean optim.lr?)"]
    for name in ("mnist-sum-evaluate", "mnist-sum-predict"):  # one shared --debug
        assert "--debug" in run_script(name, ["--help"]).stdout
    missing = run_script("mnist-sum-evaluate", [str(tmp_path / "nothing")])
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"mnist-sum: error: '{tmp_path / 'nothing'}' not found "
        "(pass a run folder, its model.safetensors or one of its step_* folders)"]
