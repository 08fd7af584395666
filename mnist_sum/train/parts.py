"""The trainer's parts, each made by one small function that returns it, in the order `Trainer` builds them:
data -> network and optimizer -> run folder -> (tracker, checkpointer) -> loop state, resumed or fresh."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from mnist_sum.config import Config
from mnist_sum.data.batches import EvalBatches, TrainBatches
from mnist_sum.data.dataset import SumDataset, load_splits, make_datasets
from mnist_sum.distributed.ranks import main_decides
from mnist_sum.errors import UsageError
from mnist_sum.files import write_text
from mnist_sum.model.network import build_model
from mnist_sum.train.averaging import WeightAverage
from mnist_sum.train.checkpoint import Checkpointer
from mnist_sum.train.runs import OpenedRun, open_run
from mnist_sum.train.schedule import make_optimizer
from mnist_sum.train.state import LoopState


@dataclass
class Data:
    """The three splits, on the training device, and this process's batches of each."""

    train_set: SumDataset
    val_set: SumDataset
    test_set: SumDataset
    train_batches: TrainBatches
    val_batches: EvalBatches
    test_batches: EvalBatches

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)


def build_data(cfg: Config, accelerator: Accelerator) -> Data:
    """Decoded once on the main process first (it may download or build a cache), then kept on the training
    device (MNIST is 55 MB). The data is not prepared by Accelerate: mnist_sum.data.batches divides it (and says why)."""
    with accelerator.main_process_first():
        splits = load_splits(cfg)
    train_set, val_set, test_set = (d.to(accelerator.device) for d in make_datasets(cfg, splits))
    rank, world = accelerator.process_index, accelerator.num_processes
    data = Data(train_set, val_set, test_set,
                TrainBatches(train_set, cfg.train.global_batch_size, cfg.train.seed, rank, world, cfg.model.norm_unit),
                EvalBatches(val_set, cfg.train.eval_batch_size, rank, world),
                EvalBatches(test_set, cfg.train.eval_batch_size, rank, world))
    if data.steps_per_epoch == 0:
        raise UsageError(f"{len(train_set)} training images make no batch of {cfg.train.global_batch_size}",
                         "lower train.global_batch_size or raise data.train_limit")
    return data


@dataclass
class Model:
    """The network two ways, and what trains it."""

    network: torch.nn.Module
    """The plain network: evaluation, BN averaging, checkpoints' best weights, the saved model."""
    prepared: torch.nn.Module
    """What the training steps run: the same network as Accelerate prepared it (wrapped for data parallelism
    when there are several processes) and, with `train.compile`, compiled."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    average: WeightAverage | None
    """The moving average of the weights (`train.ema_decay`), or None: the weights the run validates and keeps."""

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.network.parameters())


def build_model_and_optimizer(cfg: Config, accelerator: Accelerator, total_steps: int) -> Model:
    """The network with the same initial weights on every process, its optimizer and schedule, prepared."""
    set_seed(cfg.train.seed)
    network = build_model(cfg.model, cfg.train.global_batch_size)
    optimizer, scheduler = make_optimizer(network, cfg.optim, total_steps)
    prepared, optimizer, scheduler = accelerator.prepare(network, optimizer, scheduler)
    network = accelerator.unwrap_model(prepared)  # the same network, on the training device
    if cfg.train.compile:  # the steps run the compiled module; checkpoints and evaluation the plain one
        prepared = torch.compile(prepared)
    average = WeightAverage(network, cfg.train.ema_decay) if cfg.train.ema_decay else None
    return Model(network, prepared, optimizer, scheduler, average)


def open_run_folder(cfg: Config, config_name: str, resume: str | None, accelerator: Accelerator,
                    num_params: int) -> OpenedRun:
    """The run folder, made or reopened by the main process once data and recipe are known to work (no
    half-made folders), with the resolved config written into it."""
    opened = main_decides(accelerator, lambda: open_run(cfg, config_name, resume,
                                                        space_for=(num_params, cfg.checkpoint.keep_last)))
    accelerator.print(f"mnist-sum: run folder {opened.dir}"
                      + (f", resuming from {opened.checkpoint.name}" if opened.checkpoint else ""))
    if accelerator.is_main_process:
        write_text(opened.dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return opened


def start_state(cfg: Config, config_name: str, opened: OpenedRun, accelerator: Accelerator,
                checkpointer: Checkpointer) -> tuple[LoopState, dict[str, torch.Tensor]]:
    """(loop state, best-val weights so far) to start from: fresh ones, or the checkpoint's, with everything it
    saved loaded into the prepared objects."""
    world = accelerator.num_processes
    if opened.checkpoint is None or opened.state is None:
        return LoopState(config=cfg.to_dict(), config_name=config_name, world_size=world), {}
    state = opened.state
    best_weights = checkpointer.load(opened.checkpoint, state.step)
    if state.world_size != world:
        accelerator.print(
            f"mnist-sum: note: the checkpoint was written by {state.world_size} process(es); the run continues "
            "with the same global batches and the same function, but sums are reduced in another order, so it "
            "matches an uninterrupted run up to float rounding, not bit for bit")
    state.config, state.world_size = cfg.to_dict(), world  # as the next checkpoint will record them
    return state, best_weights

