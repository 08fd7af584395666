"""Data: checksummed IDX files, the val hold-out, reproducible numbers, batched loaders, the HF source."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, run_python
from torch.utils.data import DataLoader, RandomSampler

from mnist_sum.config import load_config
from mnist_sum.data.batches import EvalBatches, TrainBatches, shard, shard_sizes
from mnist_sum.data.dataset import SumDataset, load_splits, pair_numbers, split_train_val
from mnist_sum.data.idx_files import _AHEAD, read_ahead, read_idx_files
from mnist_sum.data.sources import load_hf, load_idx
from mnist_sum.data.streams import STREAM_IDS, splitmix64, stream_key, uniforms
from mnist_sum.errors import UsageError


def test_bundled_idx_files_are_the_original_mnist(mnist):
    images, labels = mnist["train"]
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    images, labels = mnist["test"]
    assert images.shape == (10000, 28, 28)
    assert labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _copy_idx(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(ROOT / "data" / "mnist", folder)
    return folder


def test_tampered_idx_file_fails_the_checksum(tmp_path):
    folder = _copy_idx(tmp_path)
    raw = bytearray(gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(UsageError, match="does not match the original MNIST checksum"):
        load_idx(folder)


def test_truncated_and_missing_idx_files(tmp_path):
    folder = _copy_idx(tmp_path)
    gz = folder / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:1000])
    with pytest.raises(UsageError, match="cannot read"):
        load_idx(folder)
    gz.unlink()
    with pytest.raises(UsageError, match="not found"):
        load_idx(folder)
    with pytest.raises(UsageError, match="MNIST folder"):
        load_idx(tmp_path / "nowhere")


def test_uncompressed_idx_files_are_read_too(tmp_path, mnist):
    folder = _copy_idx(tmp_path)
    for gz in folder.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    splits = load_idx(folder)
    assert torch.equal(splits["test"][0], mnist["test"][0])


def test_files_read_ahead_are_taken_once_and_match_a_plain_read(tmp_path):
    folder = _copy_idx(tmp_path)
    plain = read_idx_files(folder)
    read_ahead(folder)
    _AHEAD[folder].result()  # the read is done: what is taken next comes from it, not from the files
    shutil.rmtree(folder)
    assert read_idx_files(folder) == plain
    with pytest.raises(UsageError, match="MNIST folder"):  # taken once: the next read goes to the (gone) files
        read_idx_files(folder)


def test_an_error_met_reading_ahead_is_raised_where_the_files_are_taken(tmp_path):
    read_ahead(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="MNIST folder .*nowhere.* not found"):
        read_idx_files(tmp_path / "nowhere")


def test_val_hold_out_is_fixed_disjoint_and_seeded(mnist):
    images, labels = mnist["train"]
    a = split_train_val(images, labels, 5000, split_seed=0)
    b = split_train_val(images, labels, 5000, split_seed=0)
    c = split_train_val(images, labels, 5000, split_seed=1)
    assert len(a["val"][0]) == 5000 and len(a["train"][0]) == 55000
    assert torch.equal(a["val"][0], b["val"][0])
    assert not torch.equal(a["val"][0], c["val"][0])
    # Disjoint and complete: every training image lands in exactly one of the two.
    flat = lambda t: {bytes(x) for x in t.reshape(len(t), -1).numpy()}  # noqa: E731
    train_set, val_set = flat(a["train"][0]), flat(a["val"][0])
    assert not (train_set & val_set)
    assert len(train_set | val_set) == len(flat(images))


def test_numbers_are_a_pure_function_of_seed_split_epoch_index():
    idx = torch.arange(20000)
    n = pair_numbers(0, "train", 3, idx)
    assert n.min() == 0 and n.max() == 9
    counts = n.bincount(minlength=10).double() / len(n)
    assert (counts - 0.1).abs().max() < 0.01  # uniform
    perm = torch.randperm(20000)
    assert torch.equal(pair_numbers(0, "train", 3, perm), n[perm])  # order and batching do not matter
    assert torch.equal(pair_numbers(0, "train", 3, [5, 7]), n[[5, 7]])
    for other in [(1, "train", 3), (0, "val", 3), (0, "train", 4)]:
        assert (pair_numbers(*other, idx) != n).float().mean() > 0.85  # independent streams
    # Pinned values: a change to the hash would silently change every published figure.
    assert pair_numbers(0, "test", 0, torch.arange(12)).tolist() == PINNED_TEST_NUMBERS


PINNED_TEST_NUMBERS = [4, 3, 1, 4, 1, 8, 7, 2, 0, 5, 9, 6]


def test_every_random_stream_is_pinned(mnist):
    # The stream ids (mnist_sum.data.streams.STREAM_IDS) decide the order, the warps and the val hold-out of every run:
    # values computed before the ids were gathered into one table, so moving them changed nothing.
    images, labels = mnist["test"]
    batches = TrainBatches(SumDataset(images[:1000], labels[:1000], "train", 0), 8, seed=0)
    batches.set_epoch(1)
    assert next(batches.batches())["index"].tolist() == [704, 380, 407, 396, 951, 76, 838, 261]
    assert uniforms(stream_key(0, STREAM_IDS["augment"], 1), torch.tensor([0, 5]), 5).flatten().tolist() == pytest.approx(
        [-0.346363, 0.803338, 0.535495, 0.450379, 0.113207, 0.827994, -0.067534, -0.900513, -0.229601, 0.455903], abs=1e-6)
    images, labels = mnist["train"]
    val_images = split_train_val(images, labels, 5000, split_seed=0)["val"][0]
    assert torch.equal(val_images[:8], images[[11, 36, 39, 50, 58, 60, 89, 90]])


def _keep(batch):
    return batch


def _train_mapping(dataset, epoch, global_batch_size, world):
    """{index: (number, dropout key, warp)} of one epoch, as `world` processes would see it, every rank's slice."""
    seen = {}
    for rank in range(world):
        batches = TrainBatches(dataset, global_batch_size, seed=7, rank=rank, world=world)
        batches.set_epoch(epoch)
        for b in batches.batches():
            for i, n, k, w in zip(b["index"].tolist(), b["number"].tolist(), b["noise_key"].tolist(), b["warp"].tolist()):
                seen[i] = (n, k, w)
    return seen


@pytest.mark.parametrize("epoch", [0, 2])
def test_per_sample_draws_do_not_depend_on_processes_workers_or_batch_size(mnist, epoch):
    images, labels = mnist["test"]
    ds = SumDataset(images[:3000], labels[:3000], "train", seed=7)
    reference = _train_mapping(ds, epoch, 100, world=1)
    assert len(reference) == 3000
    for global_batch_size, world in [(64, 3), (256, 2), (100, 7), (1, 1)]:
        got = _train_mapping(ds, epoch, global_batch_size, world)
        assert all(reference[i] == v for i, v in got.items()), (global_batch_size, world)
        assert len(got) >= 3000 - global_batch_size  # the last partial global batch sits out
    # The dataset itself under a torch DataLoader, in worker processes and any order: the same numbers.
    ds.set_epoch(epoch)
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=128, sampler=RandomSampler(ds), collate_fn=_keep, num_workers=workers)
        pairs = {i: n for b in loader for i, n in zip(b["index"].tolist(), b["number"].tolist())}
        assert len(pairs) == 3000 and all(reference[i][0] == n for i, n in pairs.items()), workers


def test_train_numbers_change_per_epoch_but_eval_pairs_never_do(mnist):
    images, labels = mnist["test"]
    train = SumDataset(images, labels, "train", seed=0)
    test = SumDataset(images, labels, "test", seed=0)
    idx = list(range(1000))
    first_train, first_test = train.__getitems__(idx)["number"], test.__getitems__(idx)["number"]
    train.set_epoch(1)
    test.set_epoch(1)
    assert not torch.equal(train.__getitems__(idx)["number"], first_train)
    assert torch.equal(test.__getitems__(idx)["number"], first_test)


def test_train_order_is_a_seeded_permutation_per_epoch_and_eval_keeps_every_sample(mnist):
    images, labels = mnist["test"]
    ds = SumDataset(images[:1000], labels[:1000], "train", seed=0)
    batches = TrainBatches(ds, 100, seed=0)

    def order(epoch):
        batches.set_epoch(epoch)
        return torch.cat([b["index"] for b in batches.batches()]).tolist()

    e0, e1, e0_again = order(0), order(1), order(0)
    assert e0 == e0_again and e0 != e1 and sorted(e0) == list(range(1000))
    batches.set_epoch(0)
    assert torch.cat([b["index"] for b in batches.batches(start=4)]).tolist() == e0[400:]  # a resumed epoch
    for world in (1, 3, 7):  # every sample once, in index order, over all ranks, last partial batch included
        parts = [EvalBatches(ds, 300, rank, world) for rank in range(world)]
        assert torch.cat([b["index"] for p in parts for b in p]).tolist() == list(range(1000))
        assert [sum(len(b["index"]) for b in p) for p in parts] == parts[0].sizes
        assert all(len(b["index"]) <= -(-300 // world) for p in parts for b in p)
    # More processes than samples: the last part is empty and yields one empty batch, so it still gathers.
    assert [len(b["index"]) for b in EvalBatches(SumDataset(images[:2], labels[:2], "val", 0), 300, 2, 3)] == [0]


@pytest.mark.parametrize("world", [1, 2, 3, 5, 6, 7, 16, 64])
def test_shards_cover_everything_once_and_differ_by_at_most_one(world):
    for n in (1, 63, 64, 128, 1000, 10000):
        sizes = shard_sizes(n, world)
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
        starts = [shard(n, world, r)[0] for r in range(world)]
        assert starts == [sum(sizes[:r]) for r in range(world)]  # contiguous, in rank order


def test_a_batch_is_one_index_operation(mnist):
    images, labels = mnist["test"]
    batch = SumDataset(images, labels, "test", seed=0).__getitems__([3, 1, 4])
    assert torch.equal(batch["image"], images[[3, 1, 4]])
    assert torch.equal(batch["label"], labels[[3, 1, 4]])
    assert batch["image"].dtype == torch.uint8 and batch["index"].tolist() == [3, 1, 4]


def test_load_splits_applies_val_size_and_train_limit():
    cfg = load_config(None, ["data.val_size=1000", "data.train_limit=500"])
    splits = load_splits(cfg)
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [500, 1000, 10000]


def _write_parquet(folder, mnist, n_train=300, n_test=200):
    import datasets
    from PIL import Image

    folder.mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = mnist[split]
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(im.numpy()) for im in images[:n]], "label": labels[:n].tolist()},
            features=features)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


def test_hf_parquet_source_matches_the_idx_files(tmp_path, mnist):
    folder = _write_parquet(tmp_path / "parquet", mnist)
    splits = load_hf(str(folder))
    assert torch.equal(splits["train"][0], mnist["train"][0][:300])
    assert torch.equal(splits["train"][1], mnist["train"][1][:300])
    assert torch.equal(splits["test"][0], mnist["test"][0][:200])
    cfg = load_config(None, ["data.source=hf", f"data.hf_dataset={folder}", "data.val_size=100"])
    assert [len(v[0]) for v in load_splits(cfg).values()] == [200, 100, 200]


def test_hf_save_to_disk_folder(tmp_path, mnist):
    import datasets

    folder = _write_parquet(tmp_path / "parquet", mnist, 50, 40)
    dsd = datasets.load_dataset("parquet", data_files={s: str(folder / f"{s}-00000-of-00001.parquet")
                                                        for s in ("train", "test")})
    dsd.save_to_disk(str(tmp_path / "saved"))
    splits = load_hf(str(tmp_path / "saved"))
    assert torch.equal(splits["test"][0], mnist["test"][0][:40])


def test_hf_source_with_wrong_columns(tmp_path):
    import datasets

    folder = tmp_path / "bad"
    folder.mkdir()
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"pixels": [[0] * 4], "digit": [1]}).to_parquet(str(folder / f"{split}.parquet"))
    with pytest.raises(UsageError, match="expected 'image' and 'label'"):
        load_hf(str(folder))


def test_hf_folder_without_parquet_files(tmp_path):
    with pytest.raises(UsageError, match="no train or test parquet files"):
        load_hf(str(tmp_path))


def test_hub_name_unreachable_offline_is_one_clear_error(tmp_path):
    # A subprocess, because `datasets` reads the offline switches when it is first imported.
    code = ("import os, sys; from mnist_sum.commands import run_command; from mnist_sum.data.sources import load_hf; "
            "sys.exit(run_command(lambda: load_hf('ylecun/mnist'), debug=False))")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_python(["-c", code], extra_env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("mnist-sum: error: cannot load Hugging Face dataset 'ylecun/mnist'")
    assert len(result.stderr.strip().splitlines()) == 1


def _reference_splitmix64(x: np.ndarray) -> np.ndarray:
    """The finaliser in numpy's uint64 arithmetic: an independent reference for the torch one (int64 bits)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def test_the_torch_hash_is_uint64_splitmix64_bit_for_bit():
    values = np.array([0, 1, 2**31, 2**40, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    values = np.concatenate([values, np.random.default_rng(0).integers(0, 2**64, 10000, dtype=np.uint64)])
    got = splitmix64(torch.from_numpy(values.view(np.int64))).numpy().view(np.uint64)
    assert np.array_equal(got, _reference_splitmix64(values))
    # The number mod 10 of the unsigned value, also for hashes with the top bit set (negative as int64).
    key = stream_key(2**40, STREAM_IDS["train"], 10**6)
    index = np.array([0, 2**31, 2**40], dtype=np.uint64)
    expected = _reference_splitmix64(index ^ np.uint64(key)) % np.uint64(10)
    assert pair_numbers(2**40, "train", 10**6, torch.from_numpy(index.view(np.int64))).tolist() == expected.tolist()


def test_corruptions_are_a_function_of_each_samples_key_alone(mnist):
    from mnist_sum.data.augment import CORRUPTIONS, corrupt

    images = mnist["train"][0][:600].float()
    keys = splitmix64(torch.arange(600))
    out = corrupt(images, 0.5, keys)
    # The same sample in another batch, alone or in another order: the same pixels (resume, process count).
    assert torch.equal(corrupt(images[100:110].flip(0), 0.5, keys[100:110].flip(0)), out[100:110].flip(0))
    assert torch.equal(corrupt(images, 0.0, keys), images) and out.min() >= 0 and out.max() <= 255
    changed = (out != images).flatten(1).any(1).float().mean().item()
    assert 0.42 < changed < 0.58  # about half, as asked
    everything = corrupt(images, 1.0, keys)
    assert (everything != images).flatten(1).any(1).all()
    # Each of the five kinds appears: outlines leave no pixel of the stroke's inside, blur no sharp edge...
    ink = images > 127
    outlined = ((everything > 127) & ink).flatten(1).sum(1) == 0
    assert 0.1 < outlined.float().mean().item() < 0.3 and len(CORRUPTIONS) == 5


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_slices_hold_whole_batchnorm_groups(mnist, world):
    # Ghost BatchNorm normalises groups of 16 consecutive samples of a global batch: each process's slice is whole
    # groups (sizes differing by at most one group), and together the slices are the global batch in order.
    images, labels = mnist["test"]
    ds = SumDataset(images[:640], labels[:640], "train", seed=0)
    slices = []
    for rank in range(world):
        batches = TrainBatches(ds, 64, seed=0, rank=rank, world=world, unit=16)
        batches.set_epoch(0)
        slices.append([b["index"].tolist() for b in batches.batches()])
    sizes = [len(s[0]) for s in slices]
    assert all(size % 16 == 0 and size > 0 for size in sizes) and max(sizes) - min(sizes) <= 16
    whole = TrainBatches(ds, 64, seed=0)
    whole.set_epoch(0)
    for step, batch in enumerate(whole.batches()):
        assert sum((s[step] for s in slices), []) == batch["index"].tolist()


def test_elastic_warps_are_smooth_bounded_and_a_function_of_each_samples_key(mnist):
    from mnist_sum.config import AugmentConfig
    from mnist_sum.data.augment import _elastic_field, warp

    images = mnist["train"][0][:200]
    keys, still = splitmix64(torch.arange(200)), torch.zeros(200, 5)
    off, on = AugmentConfig(), AugmentConfig(elastic_px=2.0)
    bent = warp(images, on, still, keys)
    # The same sample alone or in another order: the same pixels (resume, process count, batch size).
    assert torch.equal(warp(images[50:60].flip(0), on, still[50:60], keys[50:60].flip(0)), bent[50:60].flip(0))
    # Off, the key is not used: the affine warp alone, as before the option existed.
    assert torch.equal(warp(images, off, still, keys), warp(images, off, still, None))
    assert (bent != warp(images, off, still, keys)).flatten(1).any(1).all()
    field = _elastic_field(keys, 2.0, 4) * 14  # pixels
    assert field.abs().max() <= 2.0 * 1.3  # bicubic overshoots its lattice values a little, no more
    # Large, but smooth: neighbouring pixels move by under a pixel against each other, so strokes never fold.
    assert field.abs().max() > 1.0 and (field[:, 1:] - field[:, :-1]).abs().max() < 1.0
    # Ink is moved, not made or lost: the total changes only as far as the field stretches or squeezes strokes.
    ratio = bent.sum((1, 2)) / images.float().sum((1, 2))
    assert ((ratio > 0.5) & (ratio < 2)).all() and abs(ratio.mean() - 1) < 0.05  # a thin 1 may widen by half
