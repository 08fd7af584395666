"""The configuration tree: dataclasses, YAML files, dotted overrides and validation.

Defaults are the best recipe; `configs/default.yaml` spells the same values out (a test keeps the two
equal). A YAML file is read first, then `section.key=value` overrides, each value parsed as YAML
(`optim.lr=3e-3`, `model.channels=[32,64]`). Every key and type is checked, so a typo is an error
line rather than a silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mnist_sum.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def _check(ok: bool, what: str, fix: str) -> None:
    if not ok:
        raise UsageError(what, fix)


@dataclass
class DataConfig:
    source: Literal["idx", "hf"] = "idx"
    """Where MNIST comes from: the IDX files in `idx_dir`, or Hugging Face `datasets` (`hf_dataset`)."""
    idx_dir: str = "data/mnist"
    """Folder of the four MNIST IDX files (.gz or raw); relative paths fall back to the project root."""
    hf_dataset: str = "ylecun/mnist"
    """Hub name, a folder of parquet files, or a `save_to_disk` folder in the `ylecun/mnist` schema."""
    val_size: int = 5000
    """Training images held out for validation (model selection); the rest are trained on."""
    split_seed: int = 0
    """Seed of the val hold-out and of the val/test numbers; apart from train.seed, so runs of every
    training seed are selected and scored on the same (image, number) pairs."""
    train_limit: int = 0
    """Train on only the first N training images (0 = all); for smoke tests."""

    def __post_init__(self) -> None:
        _check(self.val_size >= 1, f"data.val_size must be >= 1, got {self.val_size}", "e.g. data.val_size=5000")
        _check(self.val_size < 60000, f"data.val_size must be < 60000, got {self.val_size}",
               "the 60,000 training images are split into train and val")
        _check(self.train_limit >= 0, f"data.train_limit must be >= 0, got {self.train_limit}", "0 means all")


@dataclass
class AugmentConfig:
    enabled: bool = True
    """Warp each training image by a small random affine transform (val and test are never augmented)."""
    rotate_deg: float = 10.0
    """Largest rotation, degrees either way."""
    scale: float = 0.1
    """Largest relative zoom in or out."""
    shear: float = 0.1
    """Largest shear."""
    shift_px: float = 2.0
    """Largest shift in pixels, each axis."""
    elastic_px: float = 0.0
    """Elastic distortion: largest displacement in pixels, each axis, of the random smooth field that bends each
    training image (0 = off; mnist_sum/data/augment.py)."""
    elastic_points: int = 4
    """Elastic distortion: the field's lattice is elastic_points x elastic_points (fewer = smoother)."""
    corrupt: float = 0.0
    """Share of training images given one corruption (noise, specks, a line, outlines only, blur; see
    mnist_sum/data/augment.py), whether or not they are warped. configs/robust.yaml and quick-robust.yaml use
    0.3; the default 0, since it costs accuracy on clean MNIST (docs/robustness.md)."""

    def __post_init__(self) -> None:
        for key in ("rotate_deg", "scale", "shear", "shift_px", "elastic_px"):
            _check(getattr(self, key) >= 0, f"augment.{key} must be >= 0, got {getattr(self, key)}", "0 turns it off")
        _check(self.elastic_points >= 2, f"augment.elastic_points must be >= 2, got {self.elastic_points}", "e.g. 4")
        _check(self.scale < 1, f"augment.scale must be < 1, got {self.scale}", "e.g. 0.1")
        _check(0 <= self.corrupt <= 1, f"augment.corrupt must be in [0, 1], got {self.corrupt}", "e.g. 0.3")


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """Width of each conv stage; every stage halves the resolution (28 -> 14 -> 7 -> 3)."""
    convs_per_stage: int = 1
    """3x3 conv-BN-ReLU layers in each stage, before its 2x2 max pooling."""
    fc_hidden: int = 256
    """0: global average pooling and one linear layer read the digit. N: the last feature map, flattened,
    feeds a fully connected layer of N units (cheap next to a convolution at full resolution)."""
    sum_head: Literal["bilinear", "mlp", "concat"] = "bilinear"
    """How the sum head reads (digit probabilities p, one-hot number n). concat: the original design, one
    linear layer 20 -> 19 over the two concatenated. mlp: one hidden layer over the two concatenated.
    bilinear: one linear layer over their outer product, i.e. a learned 10 x 19 map from p to the sum logits
    for each number, which can represent argmax(p) + n exactly."""
    sum_hidden: int = 128
    """Hidden units of the mlp sum head."""
    dropout: float = 0.1
    """Dropout before the digit classifier."""
    norm: Literal["none", "ghost", "layer"] = "none"
    """Normalisation after each convolution: none (the convolutions get biases); ghost: BatchNorm over fixed
    groups of `norm_group` samples of the global batch, each group on one process; layer: LayerNorm over each
    sample's feature map. Each computes the same function on any number of processes without a collective of
    its own; none was as accurate on val and the fastest (docs/distributed.md has the candidates measured)."""
    norm_group: int = 16
    """ghost: samples per BatchNorm statistics group. The global batch must hold whole groups, and each process
    at least one (a batch of 128: 8 groups, at most 8 processes); changing it changes the function trained."""
    channels_last: bool = True
    """Memory layout for the conv trunk; faster with oneDNN on CPU and with tensor cores on GPU."""
    test_shifts: int = 1
    """Evaluation only (val, test, evaluate, predict): the digit probabilities are the mean over the image moved by
    up to this many pixels each way, (2 x test_shifts + 1)^2 views; 0: the image alone. Training is unchanged.
    Chosen on val (docs/results.md: Test-time shifts)."""

    def __post_init__(self) -> None:
        _check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
               f"model.channels must be a non-empty list of positive ints, got {self.channels}",
               "e.g. model.channels=[32,64,128]")
        _check(len(self.channels) <= 4, f"model.channels has {len(self.channels)} stages",
               "at most 4: each stage halves the 28x28 image")
        _check(self.convs_per_stage >= 1, f"model.convs_per_stage must be >= 1, got {self.convs_per_stage}", "e.g. 2")
        _check(self.fc_hidden >= 0, f"model.fc_hidden must be >= 0, got {self.fc_hidden}", "0 turns it off")
        _check(self.sum_hidden >= 1, f"model.sum_hidden must be >= 1, got {self.sum_hidden}", "e.g. 128")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}", "e.g. 0.1")
        _check(self.norm_group >= 1, f"model.norm_group must be >= 1, got {self.norm_group}", "e.g. 16")
        _check(0 <= self.test_shifts <= 3, f"model.test_shifts must be in 0..3, got {self.test_shifts}",
               "1 averages 9 views; 0 reads the image alone")

    @property
    def norm_unit(self) -> int:
        """Samples that must stay together on one process: a ghost BatchNorm group, else one sample."""
        return self.norm_group if self.norm == "ghost" else 1


@dataclass
class OptimConfig:
    lr: float = 0.003
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0001
    """Decoupled weight decay (AdamW)."""
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    """LR schedule over all training steps: warm-up then cosine to zero (onecycle), cosine only, or flat."""
    warmup_fraction: float = 0.2
    """Share of steps spent warming up (onecycle only)."""
    label_smoothing: float = 0.1
    """Label smoothing of both cross-entropies."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = off)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}", "e.g. optim.lr=0.003")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}", "e.g. 1e-4")
        _check(0 <= self.warmup_fraction < 1, f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}",
               "e.g. 0.2")
        _check(0 <= self.label_smoothing < 1, f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}",
               "e.g. 0.0")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}", "0 turns it off")


@dataclass
class TrainConfig:
    seed: int = 0
    """Seeds weights, sample order and the random numbers; one seed, one run."""
    epochs: int = 12
    """Passes over the training images."""
    global_batch_size: int = 128
    """Samples per optimizer step over all processes; each process takes global / processes."""
    eval_batch_size: int = 1000
    """Samples per evaluation batch over all processes."""
    micro_batches: int = 1
    """Split each process's slice of a step into this many micro-batches, one forward and backward each, then one
    optimizer step (gradient accumulation: less memory, the same global batch; `accelerate launch
    --gradient_accumulation_steps N` sets it). No normalisation mixes samples of different micro-batches (ghost
    BatchNorm groups stay whole), so the function is the same."""
    log_every: int = 50
    """Write a train metrics line every this many steps."""
    ema_decay: float = 0.999
    """Validate and keep an exponential moving average of the weights with this decay per step (0 = the
    weights themselves); mnist_sum.train.averaging. Val figures of the weights themselves are logged as val_live/."""
    select_z: float = 2.0
    """Keep the last epoch's weights unless an earlier epoch's are right on more val samples by more than this
    many standard errors of the difference (McNemar); 0 = the best val epoch. mnist_sum.train.selection."""
    compile: bool = False
    """torch.compile the model for training. Off: on the development CPU the compiled step was slower for
    both recipes, after seconds of compiling (docs/benchmarks.md: torch.compile). Try it on a GPU."""
    cpu_threads: int = 0
    """Threads per process when training on the CPU; 0 = this machine's cores shared by its processes.
    (`accelerate launch` without a GPU sets OMP_NUM_THREADS=1: one thread; docs/benchmarks.md: CPU settings, has its cost.)"""
    dist_timeout_s: int = 300
    """With several processes: give up on a collective (and end the job) after this many seconds, so a
    process that died or hangs takes the job down instead of leaving the others waiting forever."""
    deterministic: bool = False
    """Deterministic algorithms (torch.use_deterministic_algorithms, warning where an op has none; cuDNN
    deterministic, no autotuning), so that a GPU run killed and resumed ends byte-identical. CPU runs are
    deterministic without it; off by default because on a GPU it may cost speed (bench/gpu_check.sh measures)."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}", "e.g. train.epochs=3")
        _check(self.global_batch_size >= 1, f"train.global_batch_size must be >= 1, got {self.global_batch_size}",
               "e.g. 128")
        _check(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}",
               "e.g. 1000")
        _check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}", "e.g. 50")
        _check(self.micro_batches >= 1, f"train.micro_batches must be >= 1, got {self.micro_batches}", "e.g. 1")
        _check(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {self.ema_decay}",
               "e.g. 0.999, or 0 to keep the weights themselves")
        _check(self.select_z >= 0, f"train.select_z must be >= 0, got {self.select_z}", "e.g. 2, or 0 for best-val")
        _check(self.cpu_threads >= 0, f"train.cpu_threads must be >= 0, got {self.cpu_threads}", "0 = automatic")
        _check(self.dist_timeout_s >= 10, f"train.dist_timeout_s must be >= 10, got {self.dist_timeout_s}", "e.g. 300")


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Also checkpoint every N optimizer steps (0 = only at epoch ends); a SIGTERM/SIGINT always saves one."""
    every_epoch: bool = True
    """Checkpoint at the end of each epoch, after validation."""
    keep_last: int = 2
    """Keep the newest N whole checkpoints (at least 1)."""
    wandb_artifacts: bool = False
    """Also log each checkpoint to W&B as an artifact (type `checkpoint`, aliases `latest` and `step-N`)."""

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, f"checkpoint.every_steps must be >= 0, got {self.every_steps}", "0 turns it off")
        _check(self.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {self.keep_last}", "e.g. 2")


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when an API key and the server are there, else offline (upload later with `wandb sync`).
    The WANDB_MODE environment variable wins over this."""
    project: str = "mnist-sum"
    """W&B project."""
    entity: str = ""
    """W&B user or team; empty = your default entity."""
    name: str = ""
    """W&B run name; empty = the run folder's name."""
    tags: list[str] = field(default_factory=list)
    """W&B run tags."""
    group: str = ""
    """W&B run group, e.g. to gather the seeds of one recipe."""
    num_examples: int = 32
    """Misclassified val examples shown in the W&B table at each evaluation."""

    def __post_init__(self) -> None:
        _check(self.num_examples >= 0, f"wandb.num_examples must be >= 0, got {self.num_examples}", "e.g. 32")


@dataclass
class TrackingConfig:
    log_with: list[str] = field(default_factory=lambda: ["wandb"])
    """Accelerate trackers the metrics go to besides metrics.jsonl, e.g. [wandb, tensorboard] (TensorBoard
    writes into the run folder's tensorboard/). `wandb.mode=disabled` leaves W&B out. The names are Accelerate's
    (`accelerate.utils.LoggerType`), checked with the Accelerator (mnist_sum/distributed/accelerator.py), which knows which
    are installed."""

    def __post_init__(self) -> None:
        _check(len(set(self.log_with)) == len(self.log_with), f"tracking.log_with names a tracker twice: {self.log_with}",
               "name each once")


@dataclass
class RunConfig:
    name: str = ""
    """Run name; empty = <config name>-<date>-<time>."""
    dir: str = ""
    """Run folder; empty = runs/<name>. Must not exist yet or be empty (unless resuming or overwriting)."""
    overwrite: bool = False
    """Delete an existing run folder of the same name and start afresh."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        unit, batch = self.model.norm_unit, self.train.global_batch_size
        _check(batch % unit == 0, f"train.global_batch_size={batch} is not a whole number of BatchNorm groups of "
               f"{unit} (model.norm_group)", f"e.g. train.global_batch_size={max(unit, batch // unit * unit)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building a Config from YAML and overrides, with type checks


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.003}} -> {"optim.lr": 0.003}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise a UsageError naming the key."""
    origin = typing.get_origin(tp)
    bad = UsageError(f"{key} must be {_describe(tp)}, got {value!r}", f"e.g. {key}={_example(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        try:
            return [_coerce(v, item_tp, key) for v in value]
        except UsageError:
            raise bad from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this file, not user input


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        item = {int: "integers", float: "numbers", str: "strings"}.get(typing.get_args(tp)[0], "values")
        return f"a list of {item}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _example(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return str(typing.get_args(tp)[0])
    if origin is list:
        return "[a,b]" if typing.get_args(tp)[0] is str else "[32,64]"
    return {bool: "true", int: "10", float: "0.5", str: "text"}.get(tp, "...")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if full in REMOVED_KEYS:
            raise UsageError(f"config key {full!r} no longer exists: {REMOVED_KEYS[full]}", f"remove {full}")
        if key not in names:
            options = [f"{prefix}{n}" for n in names]
            close = difflib.get_close_matches(full, options, n=1)
            hint = f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(options)
            raise UsageError(f"unknown config key {full!r}", hint)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UsageError(f"{full} must be a section of keys, got {value!r}", f"e.g. {full}.<key>=value")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], parsed value). The value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"cannot read override {text!r}", "write overrides as section.key=value, e.g. optim.lr=0.003")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text; the type check decides whether a string is allowed
    return key.split("."), value


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: i + 1])
            raise UsageError(f"{where} is a value, not a section", f"drop the part after {where} in {'.'.join(path)}")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found", "pass an existing file, e.g. --config configs/quick.yaml")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"config file {str(path)!r} is not valid YAML{at}", "fix the syntax; see configs/default.yaml") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"config file {str(path)!r} must hold sections of keys", "see configs/default.yaml")
    return loaded


# Keys added after runs were saved, with the value that reproduces what those runs did. A run's own record
# of its config (its config.yaml, a checkpoint, a weights file) lists every key it knew, so a key it lacks
# means "as before the key existed", not today's default; a user's YAML may leave out anything.
# Runs from before model.norm normalised over the whole global batch: ghost BatchNorm with one group per global
# batch is that function (with several processes it would need the per-layer collectives that model.norm
# replaced, and the run says that a group cannot be split).
FORMER_DEFAULTS: dict[str, Any] = {
    "model.sum_head": "mlp",
    "model.norm": "ghost",
    "train.ema_decay": 0.0,
    "train.select_z": 0.0,
    "model.test_shifts": 0,
    "model.norm_group": lambda tree: tree.get("train", {}).get("global_batch_size", TrainConfig.global_batch_size),
}


# Keys that no longer exist, and why: a run's own saved config may still hold them (they are dropped from it);
# a user's YAML or override that names one is told why it went.
REMOVED_KEYS = {
    "data.num_workers": "batches are cut on the training device (mnist_sum/data/batches.py); there are no loader workers",
}


def with_former_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config tree, with the keys it predates set as they then were and removed keys dropped."""
    tree, known = copy.deepcopy(saved), flatten(saved)
    for dotted, value in FORMER_DEFAULTS.items():
        if dotted not in known:
            _set(tree, dotted.split("."), value(saved) if callable(value) else value)
    for dotted in REMOVED_KEYS:
        section, _, key = dotted.rpartition(".")
        node = tree.get(section) if isinstance(tree.get(section), dict) else {}
        node.pop(key, None)
    return tree


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), saved: bool = False) -> Config:
    """Defaults, then the YAML file (if any), then each `a.b=value` override, then validation.
    `saved`: the file is a run's own config.yaml (see FORMER_DEFAULTS)."""
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    if saved:
        tree = with_former_defaults(tree)
    for text in overrides:
        keys, value = parse_override(text)
        _set(tree, keys, value)
    return _build(Config, tree, "")

