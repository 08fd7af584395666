"""Where metrics go: `metrics.jsonl` in the run folder (always) and Accelerate's trackers (`tracking.log_with`:
Weights & Biases by default, TensorBoard and the others Accelerate knows on request).

Only the main process writes; on other processes `Tracker` is a no-op, so the training loop never asks
which process it is on before logging. W&B never prompts and never hangs: with no API key, or no route
to its server, the run is logged offline into the run folder and the `wandb sync` command is printed.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import socket
import string
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from accelerate import Accelerator

from mnist_sum.config import Config, WandbConfig, flatten
from mnist_sum.errors import Stopped, UsageError
from mnist_sum.model.scoring import Predictions, hits

# The dashboard's summary for these is the best value, not the last.
BEST_IS_MAX = ("val/digit_acc", "val/sum_acc", "val/joint_acc", "val/sum_acc_given_digit", "val/exhaustive_sum_acc")
BEST_IS_MIN = ("val/loss", "train/loss")


def _host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def _has_api_key() -> bool:
    """WANDB_API_KEY, or the ~/.netrc entry that `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(_host()) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((_host(), 443), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(cfg: WandbConfig) -> tuple[str, str]:
    """(mode, why): 'online', 'offline' or 'disabled'. WANDB_MODE in the environment wins over the config."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if not env:
        os.environ.pop("WANDB_MODE", None)  # set but empty: wandb itself would fail on it
    if env in ("online", "offline", "disabled"):
        return env, "WANDB_MODE"
    if env == "dryrun":
        return "offline", "WANDB_MODE"
    if cfg.mode in ("offline", "disabled"):
        return cfg.mode, "config"
    if not _has_api_key():
        if cfg.mode == "online":
            raise UsageError("wandb.mode=online but no W&B API key was found",
                             "run `wandb login` or set WANDB_API_KEY, or use wandb.mode=auto to log offline")
        return "offline", "no W&B API key found"
    if not _reachable():
        if cfg.mode == "online":
            raise UsageError(f"wandb.mode=online but {_host()} cannot be reached", "use wandb.mode=auto to log offline")
        return "offline", f"{_host()} cannot be reached"
    return "online", "config"


def tracker_names(cfg: Config) -> list[str]:
    """The Accelerate trackers of a run: `tracking.log_with`, without W&B when it is disabled."""
    wandb_off = cfg.wandb.mode == "disabled" or os.environ.get("WANDB_MODE", "").strip().lower() == "disabled"
    return [name for name in cfg.tracking.log_with if not (name == "wandb" and wandb_off)]


def offline_segments(sync_dir: Path, run_id: str) -> list[Path]:
    """Every offline folder of one W&B run, oldest first: a resumed offline run writes a new
    `offline-run-<start time>-<id>` folder beside the earlier ones (`sync_dir` is the newest). `wandb sync`
    uploads them in start order as one run, dropping steps an earlier folder already holds."""
    return sorted({*sync_dir.parent.glob(f"offline-run-*-{run_id}"), sync_dir})


def _relative(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


class Tracker:
    """Where the loop logs. A context manager: leaving it closes the metrics file and, when the run failed,
    marks the W&B run failed (`accelerator.end_training()` finishes it otherwise)."""

    def __init__(self, accelerator: Accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.run_dir = run_dir
        self.wandb = None  # the wandb Run, on the main process when W&B is on
        self._wandb_from_step = 0
        path = run_dir / "metrics.jsonl"
        # Appending: a resumed run continues the file (cut back to the checkpoint's line count beforehand).
        self.lines = len(path.read_text().splitlines()) if self.enabled and path.exists() else 0
        self._file = open(path, "a") if self.enabled else None  # noqa: SIM115 (closed in close())

    def start(self, cfg: Config, config: dict[str, Any], run_name: str, run_id: str | None, step: int) -> str | None:
        """Start the trackers and, for a resumed run (at `step` > 0), replay its log to them. W&B continues the
        run `run_id` (a checkpoint's) if given. Returns the W&B run id, or None without W&B."""
        names = [str(t) for t in self.accelerator.log_with] if self.enabled else []
        if not names:
            return None
        init_kwargs: dict[str, dict[str, Any]] = {}
        if "wandb" in names:
            mode, why = wandb_mode(cfg.wandb)
            run_id = run_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            init_kwargs["wandb"] = {"id": run_id, "resume": "allow", "name": cfg.wandb.name or run_name,
                                    "entity": cfg.wandb.entity or None, "tags": cfg.wandb.tags or None,
                                    "group": cfg.wandb.group or None, "dir": str(self.run_dir), "mode": mode}
        if "tensorboard" in names:
            # A resumed run hides the earlier sessions' events (a killed one may have logged past its checkpoint,
            # or not have flushed its last events) and logs the whole log up to the checkpoint again (_replay).
            init_kwargs["tensorboard"] = {"purge_step": 0} if step else {}
        self.accelerator.project_configuration.logging_dir = str(self.run_dir / "tensorboard")  # see make_accelerator
        try:
            self.accelerator.init_trackers(cfg.wandb.project, init_kwargs=init_kwargs)
        except BaseException:
            self.accelerator.trackers.clear()  # a half-started tracker would fail again in end_training
            raise
        for tracker in self.accelerator.trackers:  # W&B keeps the config's tree; the others take flat scalars
            tracker.store_init_configuration(config if tracker.name == "wandb" else _scalars(config))
        if "wandb" in names:
            self._start_wandb(mode, why)
        self._replay()
        return run_id if "wandb" in names else None

    def _start_wandb(self, mode: str, why: str) -> None:
        self.wandb = self.accelerator.get_tracker("wandb", unwrap=True)
        for key in BEST_IS_MAX:
            self.wandb.define_metric(key, summary="max")
        for key in BEST_IS_MIN:
            self.wandb.define_metric(key, summary="min")
        # A resumed online run knows the last step its server holds; steps up to it were logged before the
        # interruption, with the same values (the resume is exact), and W&B would refuse them again.
        self._wandb_from_step = self.wandb.step if self.wandb.resumed else 0
        if mode == "offline":
            segments = offline_segments(Path(self.wandb.settings.sync_dir), self.wandb.id)
            print(f"mnist-sum: W&B is logging offline ({why}); upload later with: wandb sync "
                  f"{' '.join(str(_relative(p)) for p in segments)}", file=sys.stderr)
        else:
            print(f"mnist-sum: W&B run {self.wandb.url}", file=sys.stderr)

    def _replay(self) -> None:
        """A resumed run logs its earlier metrics.jsonl lines (cut back to the checkpoint) to the trackers again:
        a session killed with SIGKILL loses what they had not yet written out, and the checkpoint may be newer
        than that. W&B keeps the steps it lacks and drops the rest (online: the steps below the server's;
        offline: `wandb sync` drops steps an earlier folder of the run already holds); TensorBoard hides the
        earlier sessions' events (purge_step)."""
        self._file.flush()
        with open(self.run_dir / "metrics.jsonl") as lines:
            for line in lines:
                values = json.loads(line)
                self._to_trackers(values, values.pop("step"))

    def log(self, values: dict[str, Any], step: int) -> None:
        """One JSON line per call: {"step": N, key: value, ...}, flushed so a crash keeps every line written;
        the same values to every tracker."""
        if self._file is None:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        self.lines += 1
        self._to_trackers(values, step)

    def _to_trackers(self, values: dict[str, Any], step: int) -> None:
        for tracker in self.accelerator.trackers:
            if tracker.name != "wandb":
                tracker.log(values, step=step)
        self.log_wandb(values, step)

    def log_wandb(self, values: dict[str, Any], step: int) -> None:
        if self.wandb is not None and step >= self._wandb_from_step:
            self.wandb.log(values, step=step)

    def log_model(self, test: dict[str, Any]) -> None:
        """W&B: the final (best-val) weights, with config.yaml and results.json, as an artifact of type `model`
        (aliases `best` and `latest`), its metadata the test metrics."""
        if self.wandb is None:
            return
        import wandb  # here, not at the top: see wandb_examples

        artifact = wandb.Artifact(f"model-{self.wandb.id}", type="model", metadata={f"test/{k}": v for k, v in test.items()})
        for name in ("model.safetensors", "config.yaml", "results.json"):
            artifact.add_file(str(self.run_dir / name))
        self.wandb.log_artifact(artifact, aliases=["best", "latest"])

    def log_checkpoint(self, folder: Path, step: int) -> None:
        """W&B: a checkpoint folder as an artifact of type `checkpoint` (aliases `latest` and `step-N`). Its
        files are copied into W&B's staging area at once, so pruning the folder later loses nothing."""
        if self.wandb is None:
            return
        import wandb  # here, not at the top: see wandb_examples

        artifact = wandb.Artifact(f"checkpoint-{self.wandb.id}", type="checkpoint", metadata={"step": step})
        artifact.add_dir(str(folder))
        self.wandb.log_artifact(artifact, aliases=["latest", f"step-{step}"])

    def log_examples(self, preds: Predictions, images: torch.Tensor, prefix: str, num_examples: int, step: int) -> None:
        """W&B only: a table of misclassified examples and both confusion matrices."""
        if self.wandb is not None:
            self.log_wandb(wandb_examples(preds, images, prefix, num_examples), step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def close(self, failed: bool = False) -> None:
        """Close the metrics file; with `failed`, finish the W&B run as failed (exit code 1)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if failed and self.wandb is not None:
            self.wandb.finish(exit_code=1)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        # A requested stop is not a failure: the run continues on resume, in the same W&B run.
        self.close(failed=kind is not None and not issubclass(kind, Stopped))


def _scalars(config: dict[str, Any]) -> dict[str, Any]:
    """The config as flat `section.key` scalars (lists as text): what TensorBoard's hparams and most trackers take."""
    return {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v) for k, v in flatten(config).items()}


def wandb_examples(preds: Predictions, images: torch.Tensor, prefix: str, num_examples: int) -> dict[str, Any]:
    """W&B media for one evaluation: a table of misclassified examples and both confusion matrices."""
    import wandb  # here, not at the top: start-up a run with W&B disabled does not need (docs/benchmarks.md)

    digit_ok, sum_ok = hits(preds["label"], preds["number"], preds["pred_digit"], preds["pred_sum"])
    wrong = (~(digit_ok & sum_ok)).nonzero().flatten()[:num_examples]
    table = wandb.Table(columns=["image", "number", "pred_digit", "pred_sum", "digit", "sum"])
    for i in wrong.tolist():
        label, number = int(preds["label"][i]), int(preds["number"][i])
        table.add_data(wandb.Image(images[int(preds["index"][i])].cpu().numpy()), number, int(preds["pred_digit"][i]),
                       int(preds["pred_sum"][i]), label, label + number)
    return {
        f"{prefix}/misclassified": table,
        f"{prefix}/confusion_digit": wandb.plot.confusion_matrix(
            y_true=preds["label"].tolist(), preds=preds["pred_digit"].tolist(), class_names=[str(d) for d in range(10)],
            title="digit"),
        f"{prefix}/confusion_sum": wandb.plot.confusion_matrix(
            y_true=(preds["label"] + preds["number"]).tolist(), preds=preds["pred_sum"].tolist(),
            class_names=[str(s) for s in range(19)], title="sum"),
    }
