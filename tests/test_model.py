"""Model: shapes, the loss, the sum head's ability to add, and saved weights that rebuild the network."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from mnist_sum.config import ModelConfig
from mnist_sum.errors import UsageError
from mnist_sum.model.layers import GhostBatchNorm2d, sum_running_stats
from mnist_sum.model.network import BILINEAR_INPUT_SCALE, NUM_SUMS, build_model, sum_loss
from mnist_sum.model.weights import load_weights, save_weights


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g), torch.randint(0, 10, (n,), generator=g))


def test_evaluation_averages_the_nine_one_pixel_shifts_and_training_and_val_read_the_image_alone():
    torch.manual_seed(0)
    cfg = ModelConfig(channels=[8, 16], fc_hidden=32, dropout=0.0)
    model, single = build_model(cfg), build_model(replace(cfg, test_shifts=0))
    single.load_state_dict(model.state_dict())
    images, labels, numbers = _batch(6)  # noise up to the border: a shift that wrapped around would show
    padded = F.pad(images, (1, 1, 1, 1))
    views = [padded[:, 1 + dy:29 + dy, 1 + dx:29 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    model.eval(), single.eval()
    with torch.no_grad():
        expected = torch.stack([single.digit_logits(v).softmax(-1) for v in views]).mean(0)
        digits, sums = model(images, numbers)
        torch.testing.assert_close(digits.exp(), expected)
        torch.testing.assert_close(sums, single.sum_logits(expected.log(), numbers))  # the head adds the mean
        assert not torch.allclose(expected, single.digit_logits(images).softmax(-1))
        # Val, which picks the epoch, reads one view (trainer.validate_and_select); test reads the nine.
        torch.testing.assert_close(model.digit_logits(images, shifts=0), single.digit_logits(images))
    model.train(), single.train()
    torch.testing.assert_close(model.digit_logits(images), single.digit_logits(images))


@pytest.mark.parametrize("channels, convs, fc_hidden", [([8], 2, 0), ([8, 16], 2, 0), ([8, 16, 32], 2, 0),
                                                         ([4, 8, 16, 32], 2, 0), ([8], 1, 32), ([8, 16], 1, 64),
                                                         ([4, 8, 16], 3, 16), ([4, 8, 16, 32], 1, 8)])
def test_two_heads_have_the_right_shapes(channels, convs, fc_hidden):
    model = build_model(ModelConfig(channels=channels, convs_per_stage=convs, fc_hidden=fc_hidden, sum_hidden=16)).eval()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs * len(channels)
    images, labels, numbers = _batch()
    digits, sums = model(images, numbers)
    assert digits.shape == (16, 10) and sums.shape == (16, NUM_SUMS)
    assert torch.isfinite(digits).all() and torch.isfinite(sums).all()


def test_loss_is_the_mean_of_the_two_cross_entropies():
    digits, sums = torch.randn(8, 10), torch.randn(8, NUM_SUMS)
    labels, numbers = torch.randint(0, 10, (8,)), torch.randint(0, 10, (8,))
    total, digit, add = sum_loss(digits, sums, labels, numbers)
    assert torch.allclose(digit, F.cross_entropy(digits, labels))
    assert torch.allclose(add, F.cross_entropy(sums, labels + numbers))
    assert torch.allclose(total, (digit + add) / 2)


def test_channels_last_changes_layout_not_results():
    torch.manual_seed(0)
    a = build_model(ModelConfig(channels=[8, 16], channels_last=True)).eval()
    b = build_model(ModelConfig(channels=[8, 16], channels_last=False)).eval()
    b.load_state_dict(a.state_dict())
    images, _, numbers = _batch()
    for x, y in zip(a(images, numbers), b(images, numbers)):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("head", ["bilinear", "mlp"])
def test_sum_head_learns_addition_from_a_digit_distribution(head):
    # Given confident digit logits, the sum head alone must learn all 100 (digit, number) sums.
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=[4], sum_head=head, sum_hidden=64))
    opt = torch.optim.Adam(model.sum_head.parameters(), lr=1e-2)
    digits, numbers = torch.arange(10).repeat_interleave(10), torch.arange(10).repeat(10)
    logits = F.one_hot(digits, 10).float() * 8
    for _ in range(300):
        loss = F.cross_entropy(model.sum_logits(logits, numbers), digits + numbers)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model.sum_logits(logits, numbers).argmax(-1) == digits + numbers).all()


def test_bilinear_sum_head_can_add_exactly():
    # With the addition table as its weights (logit of s = p[s - n]), the head's answer is the digit head's
    # answer plus the number for every distribution, near-ties included: nothing is left to approximate.
    model = build_model(ModelConfig(channels=[4]))
    table = torch.zeros(NUM_SUMS, 10, 10)
    for d in range(10):
        for n in range(10):
            table[d + n, d, n] = 1 / BILINEAR_INPUT_SCALE
    with torch.no_grad():
        model.sum_head.weight.copy_(table.flatten(1))
        model.sum_head.bias.zero_()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10_000, 10, generator=g)
    top = logits.max(-1).values
    logits[::2, 3], logits[::2, 7] = top[::2] + 1e-3, top[::2] + 2e-3  # near-ties: 7 wins by a hair
    logits[1::4, 3] = top[1::4] + 3e-3
    numbers = torch.randint(0, 10, (10_000,), generator=g)
    assert torch.equal(model.sum_logits(logits, numbers).argmax(-1), logits.argmax(-1) + numbers)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what --mixed_precision bf16 runs the model under
        under_bf16 = model.sum_logits(logits, numbers)
    assert under_bf16.dtype == torch.float32
    assert torch.equal(under_bf16.argmax(-1), logits.argmax(-1) + numbers)  # the head runs in fp32


def test_bilinear_sum_head_is_one_linear_map_of_p_for_each_number():
    # Against an independent reading of the head: logit s = scale * sum_d W[s, d, n] p[d] + b[s], with a random,
    # non-symmetric W (the addition table is symmetric in d and n, so it cannot tell a transposed product),
    # the input scale included (argmax alone cannot see it).
    model = build_model(ModelConfig(channels=[4]))
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(NUM_SUMS, 10, 10, generator=g), torch.randn(NUM_SUMS, generator=g)
    with torch.no_grad():
        model.sum_head.weight.copy_(weight.flatten(1))
        model.sum_head.bias.copy_(bias)
    logits, numbers = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    p = logits.softmax(-1)
    expected = BILINEAR_INPUT_SCALE * torch.einsum("sdb,bd->bs", weight[:, :, numbers], p) + bias
    assert torch.allclose(model.sum_logits(logits, numbers), expected, atol=1e-4)


def test_weights_written_before_the_bilinear_head_and_model_norm_load_as_trained(tmp_path):
    # Files of older versions: an MLP sum head, and BatchNorm (which evaluates as ghost BatchNorm does).
    from safetensors.torch import save_file

    cfg = ModelConfig(channels=[8], sum_head="mlp", norm="ghost")
    model = build_model(cfg)
    model.train()(*_batch()[::2], noise_key=torch.arange(16))  # running statistics of their own
    sum_running_stats(model)
    model.eval()
    stored = asdict(cfg)
    del stored["sum_head"], stored["norm"], stored["norm_group"]  # what files of older versions hold
    save_file(dict(model.state_dict()), str(tmp_path / "old.safetensors"), metadata={"model_config": json.dumps(stored)})
    loaded = load_weights(tmp_path / "old.safetensors")
    images, _, numbers = _batch()
    assert torch.equal(model(images, numbers)[1], loaded(images, numbers)[1])
    assert isinstance(loaded.trunk[0][1], GhostBatchNorm2d)


def test_saved_weights_rebuild_the_same_network(tmp_path):
    cfg = ModelConfig(channels=[8, 16], sum_hidden=24, dropout=0.0)
    model = build_model(cfg).eval()
    save_weights(tmp_path / "model.safetensors", model, cfg)
    loaded = load_weights(tmp_path / "model.safetensors")
    images, _, numbers = _batch()
    for x, y in zip(model(images, numbers), loaded(images, numbers)):
        assert torch.equal(x, y)


def test_damaged_weights_are_refused(tmp_path):
    cfg = ModelConfig(channels=[8])
    path = tmp_path / "model.safetensors"
    save_weights(path, build_model(cfg), cfg)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UsageError, match="not a readable mnist-sum weights file"):
        load_weights(path)
    with pytest.raises(UsageError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_weights_of_another_network_are_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(other))  # someone else's model: no mnist-sum metadata
    with pytest.raises(UsageError, match="not a readable mnist-sum weights file"):
        load_weights(other)
    # Our metadata, but tensors of another shape: the file does not hold the network it describes.
    cfg = ModelConfig(channels=[8])
    wider = build_model(ModelConfig(channels=[16]))
    save_weights(tmp_path / "mixed.safetensors", wider, cfg)
    with pytest.raises(UsageError, match="does not match the network its metadata describes"):
        load_weights(tmp_path / "mixed.safetensors")


def test_concat_sum_head_is_the_original_design():
    # model.sum_head=concat: the digit head's probabilities concatenated with the one-hot number, one linear layer
    # 20 -> 19 (the design this project started from), so its logits are W [p, one-hot n] + b.
    model = build_model(ModelConfig(channels=[4], sum_head="concat"))
    assert isinstance(model.sum_head, torch.nn.Linear) and tuple(model.sum_head.weight.shape) == (NUM_SUMS, 20)
    g = torch.Generator().manual_seed(2)
    logits, numbers = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    inputs = torch.cat([logits.softmax(-1), F.one_hot(numbers, 10).float()], dim=1)
    expected = inputs @ model.sum_head.weight.T + model.sum_head.bias
    assert torch.allclose(model.sum_logits(logits, numbers), expected, atol=1e-6)


def test_ghost_batchnorm_normalises_each_group_alone_whatever_the_slice():
    # Each group of 16 is normalised by its own statistics, as a BatchNorm2d in training mode would normalise it
    # alone, so a process holding any whole groups of the global batch computes their outputs bit for bit.
    torch.manual_seed(0)
    ghost = GhostBatchNorm2d(8, group_size=16, groups_per_step=4).train()
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 1.5)
        ghost.bias.uniform_(-1, 1)
    x = torch.randn(64, 8, 5, 5) * 3 + 1
    whole = ghost(x)
    for i in range(4):
        plain = torch.nn.BatchNorm2d(8).train()
        plain.load_state_dict({k: v for k, v in ghost.state_dict().items()})
        assert torch.allclose(whole[16 * i:16 * (i + 1)], plain(x[16 * i:16 * (i + 1)]), atol=1e-6)
    assert torch.equal(ghost(x[16:48]), whole[16:48])
    # The running statistics: the mean of the four groups' statistics, weighted by the momentum; in evaluation
    # the layer is BatchNorm2d itself.
    fresh = GhostBatchNorm2d(8, group_size=16, groups_per_step=4).train()
    fresh(x)
    sum_running_stats(fresh)
    groups = x.view(4, 16, 8, 5, 5)
    assert torch.allclose(fresh.running_mean, 0.1 * groups.mean((1, 3, 4)).mean(0), atol=1e-6)
    assert torch.allclose(fresh.running_var, 0.9 + 0.1 * groups.transpose(1, 2).reshape(4, 8, -1).var(-1).mean(0), atol=1e-5)
    plain = torch.nn.BatchNorm2d(8).eval()
    plain.load_state_dict(fresh.state_dict())
    assert torch.equal(fresh.eval()(x), plain(x))


def test_loaded_running_statistics_are_whole_until_the_next_sum():
    # After a load (a resume, or weights from a file) the loaded statistics are all of them: training adds to
    # them from there, and summing without training keeps them as loaded.
    source = GhostBatchNorm2d(4, group_size=8).train()
    source(torch.randn(16, 4, 3, 3) + 2)
    sum_running_stats(source)
    target = GhostBatchNorm2d(4, group_size=8)
    target.load_state_dict(source.state_dict())
    sum_running_stats(target)
    assert torch.equal(target.running_mean, source.running_mean) and torch.equal(target.running_var, source.running_var)
