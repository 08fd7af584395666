"""Bad input gets one clear line and a non-zero exit, and loses nothing: property-based checks of the override
parser and of predict's input checks, plus real runs into unwritable and full folders and a diverging loss."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ROOT, run_python, train_in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from mnist_sum.commands import number_0_to_9
from mnist_sum.config import Config, load_config, parse_override
from mnist_sum.data.framing import to_mnist
from mnist_sum.errors import UsageError
from mnist_sum.inference.predict import open_image

SMOKE_ARGS = ["--config", str(ROOT / "configs" / "smoke.yaml"), "wandb.mode=disabled"]
SMOKE = ["train.py", *SMOKE_ARGS]


# ---- the override parser: anything in, a Config or one UsageError out

KEYS = ["optim.lr", "train.epochs", "model.channels", "model.channels_last", "optim.schedule", "run.name",
        "data.val_size", "nosuch.key", "optim", "train.epochs.x", "wandb.tags"]


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), value=st.text(max_size=30))
def test_any_override_gives_a_config_or_one_usage_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except UsageError as err:
        assert err.line().startswith("mnist-sum: error: ") and "\n" not in err.line()
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(epochs=st.integers(min_value=1, max_value=10**6), lr=st.floats(min_value=1e-8, max_value=10.0),
       channels=st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=4))
def test_valid_overrides_round_trip(epochs, lr, channels):
    cfg = load_config(None, [f"train.epochs={epochs}", f"optim.lr={lr!r}", f"model.channels={channels}"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.model.channels) == (epochs, lr, channels)


@given(st.text(max_size=40))
def test_parse_override_never_crashes(text):
    try:
        keys, _ = parse_override(text)
    except UsageError:
        return
    assert all(keys) and "=" in text


# ---- predict's input checks

@given(st.text(max_size=12))
def test_number_is_an_int_in_0_to_9_or_refused(text):
    try:
        value = number_0_to_9(text)
    except argparse.ArgumentTypeError:
        return
    assert isinstance(value, int) and 0 <= value <= 9 and int(text) == value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_any_bytes_named_png_are_read_or_refused_in_one_line(tmp_path, data):
    path = tmp_path / "file.png"
    path.write_bytes(data)
    try:
        image = open_image(path)
    except UsageError as err:
        assert "\n" not in err.line()
        return
    try:
        assert to_mnist(image).shape == (28, 28)
    except UsageError as err:
        assert "blank" in err.what


@settings(max_examples=80, deadline=None)
@given(width=st.integers(1, 400), height=st.integers(1, 400), mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1"]),
       seed=st.integers(0, 2**16), light=st.booleans())
def test_any_image_becomes_a_28x28_mnist_frame_or_blank(width, height, mode, seed, light):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    if light:
        pixels = 255 - pixels // 4  # mostly light: a drawing on paper
    image = Image.fromarray(pixels).convert(mode)
    try:
        frame = to_mnist(image)
    except UsageError as err:
        assert "blank" in err.what
        return
    assert frame.shape == (28, 28) and frame.dtype == np.uint8 and frame.max() > 0


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    buffer = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buffer, format="PNG")  # 48 megapixels, a few kB on disk
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UsageError, match="too large"):
        open_image(path)


# ---- run folders and training

def test_run_folder_under_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = train_in_process([*SMOKE_ARGS, f"run.dir={blocker}/run"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"mnist-sum: error: cannot write to run folder '{blocker}/run': Not a directory (choose a writable run.dir)"]


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_detected_before_training_starts(tiny_disk, capsys):
    code, err = train_in_process([*SMOKE_ARGS, f"run.dir={tiny_disk}/run"], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("mnist-sum: error: only ") and "MiB free for run folder" in line
    assert not (tiny_disk / "run").exists()  # nothing half-made


def test_overwrite_replaces_an_old_run_only_when_asked(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run)
    refused = run_python([*SMOKE, f"run.dir={run}", "data.train_limit=1024"])
    assert refused.returncode == 2 and "run.overwrite=true" in refused.stderr
    replaced = run_python([*SMOKE, f"run.dir={run}", "data.train_limit=1024", "run.overwrite=true"])
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert "train_limit: 1024" in (run / "config.yaml").read_text() and not (run / "wandb").exists()


def test_diverging_loss_stops_the_run_and_keeps_only_finite_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = run_python([*SMOKE, "optim.lr=1e6", "checkpoint.every_steps=2", "train.log_every=2", f"run.dir={run}"])
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    # The loss is checked at each log line, the weights before each checkpoint: whichever sees it first.
    assert line.startswith("mnist-sum: error: training diverged: the ") and "lower optim.lr" in line
    bad_step = int(line.split(" step ")[1].split(";")[0])
    saved = sorted(int(p.name.split("_")[1]) for p in run.glob("step_*"))
    assert all(s < bad_step for s in saved) and not (run / "results.json").exists()
    for step in saved:  # every checkpoint that exists holds finite weights
        weights = load_file(str(run / f"step_{step:06d}" / "model.safetensors"))
        assert all(bool(np.isfinite(t.numpy()).all()) for t in weights.values())
