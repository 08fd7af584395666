"""Launched by the tests under `accelerate launch`: writes the global training batches (index and number
of every sample, in order) of two epochs, as the prepared loader delivers them to the processes."""

import json
import sys

import torch

from mnist_sum.config import load_config
from mnist_sum.data import load_splits, make_datasets, make_loader, set_epoch
from mnist_sum.distributed import make_accelerator

out, *overrides = sys.argv[1:]
cfg = load_config(None, overrides)
accelerator = make_accelerator()
train_set, _, _ = make_datasets(cfg, load_splits(cfg))
loader = accelerator.prepare(make_loader(train_set, cfg.train.global_batch_size, seed=cfg.train.seed, train=True,
                                         num_workers=cfg.data.num_workers))
epochs = []
for epoch in range(2):
    set_epoch(loader, epoch)
    batches = []
    for batch in loader:
        pairs = torch.stack([batch["index"], batch["number"]], dim=1)
        batches.append(accelerator.gather(pairs).tolist())  # rank order = the global batch's order
    epochs.append(batches)
if accelerator.is_main_process:
    json.dump({"world_size": accelerator.num_processes, "epochs": epochs}, open(out, "w"))
accelerator.end_training()
