"""fp16's grad scaler, as far as a CPU can run it: the real `train_step`, torch's GradScaler and Accelerate's
checkpointing. Accelerate gives no scaler on the CPU (and make_accelerator refuses fp16 there, which would be
fp32 in disguise), so the test hands the Accelerator a CPU GradScaler itself; what only a GPU has (fp16 autocast
kernels, their overflows) bench/gpu_check.sh runs: the quick recipe in fp16."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from mnist_sum.config import load_config
from mnist_sum.data.batches import TrainBatches
from mnist_sum.data.dataset import SumDataset
from mnist_sum.model.network import build_model
from mnist_sum.train.schedule import make_optimizer
from mnist_sum.train.step import train_step
from mnist_sum.train.window import TrainMetricsWindow


@pytest.fixture
def scaled(mnist):
    """(accelerator with a CPU GradScaler, model, optimizer, scheduler, cfg, batches) for the smoke net."""
    AcceleratorState._reset_state(True)
    # What Accelerator(mixed_precision="fp16") sets up on a GPU: fp16 autocast around the model, a grad scaler
    # (here a CPU one, starting so high that the first gradients overflow).
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.native_amp, accelerator.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**24)
    cfg = load_config(None, ["model.channels=[8,16]", "train.global_batch_size=32"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model, optimizer, scheduler = accelerator.prepare(model, *make_optimizer(model, cfg.optim, 100))
    batches = TrainBatches(SumDataset(*(t[:256] for t in mnist["train"]), "train", 0), 32, seed=0)
    batches.set_epoch(0)
    yield accelerator, model, optimizer, scheduler, cfg, list(batches.batches())
    AcceleratorState._reset_state(True)


def test_a_skipped_step_is_counted_leaves_the_weights_and_backs_the_scale_off(scaled):
    accelerator, model, optimizer, scheduler, cfg, batches = scaled
    before = [p.detach().clone() for p in model.parameters()]
    out = train_step(model, batches[0], optimizer, scheduler, accelerator, cfg)
    assert bool(out.skipped) and torch.isfinite(out.digit_ce).all()  # inf gradients, not a diverged loss
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the fused update was skipped
    assert accelerator.scaler.get_scale() == 2.0**23
    window = TrainMetricsWindow(accelerator.device)
    window.add(out, 1, batches[0]["label"], batches[0]["number"])
    skipped = [True]
    for step, batch in enumerate(batches[1:], start=2):  # the scale backs off until the gradients are finite
        scale = accelerator.scaler.get_scale()
        out = train_step(model, batch, optimizer, scheduler, accelerator, cfg)
        assert bool(out.skipped) == (accelerator.scaler.get_scale() < scale), step  # the scaler's own verdict
        skipped.append(bool(out.skipped))
        window.add(out, step, batch["label"], batch["number"])
    assert window.flush(accelerator, lr=0.1, epoch=0.0)["train/skipped_steps"] == sum(skipped)
    assert 0 < sum(skipped) < len(batches)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the steps not skipped trained


def test_a_checkpoint_restores_the_grad_scaler(scaled, tmp_path):
    accelerator, model, optimizer, scheduler, cfg, batches = scaled
    for batch in batches[:3]:
        train_step(model, batch, optimizer, scheduler, accelerator, cfg)
    saved_scale = accelerator.scaler.get_scale()
    accelerator.save_state(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "scaler.pt").is_file()
    for batch in batches[3:]:
        train_step(model, batch, optimizer, scheduler, accelerator, cfg)
    accelerator.scaler.update(new_scale=1.0)
    accelerator.load_state(str(tmp_path / "ckpt"))
    assert accelerator.scaler.get_scale() == saved_scale < 2.0**24
