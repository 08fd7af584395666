"""Launched by the tests under `accelerate launch`: writes the global training batches of two epochs as the
processes see them (index, number, dropout key and warp of every sample, in order), and each process's slice size."""

import json
import sys

import torch

from mnist_sum.config import load_config
from mnist_sum.data.batches import TrainBatches, shard_sizes
from mnist_sum.data.dataset import load_splits, make_datasets
from mnist_sum.distributed.accelerator import make_accelerator
from mnist_sum.model.scoring import gather_parts

out, *overrides = sys.argv[1:]
cfg = load_config(None, overrides)
accelerator = make_accelerator()
train_set, _, _ = make_datasets(cfg, load_splits(cfg))
batches = TrainBatches(train_set, cfg.train.global_batch_size, cfg.train.seed, accelerator.process_index,
                       accelerator.num_processes)
sizes = shard_sizes(cfg.train.global_batch_size, accelerator.num_processes)
epochs, slice_sizes = [], set()
for epoch in range(2):
    batches.set_epoch(epoch)
    seen = []
    for batch in batches.batches():
        slice_sizes.add(len(batch["index"]))
        ints = gather_parts(torch.stack([batch["index"], batch["number"], batch["noise_key"]], dim=1), sizes, accelerator)
        warps = gather_parts(batch["warp"], sizes, accelerator)  # rank order = the global batch's order
        seen.append([[*i, *w] for i, w in zip(ints.tolist(), warps.tolist())])
    epochs.append(seen)
gathered = [sorted(slice_sizes)] * accelerator.num_processes
if accelerator.num_processes > 1:
    torch.distributed.all_gather_object(gathered, sorted(slice_sizes))
if accelerator.is_main_process:
    json.dump({"world_size": accelerator.num_processes, "epochs": epochs, "slice_sizes": gathered}, open(out, "w"))
accelerator.end_training()
