"""Config: defaults, YAML files, dotted overrides, and one-line errors for every kind of mistake."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, run_python

from mnist_sum.config import Config, flatten, load_config, parse_override
from mnist_sum.distributed.ranks import check_world
from mnist_sum.errors import UsageError
from mnist_sum.train.runs import _check_same_recipe
from mnist_sum.train.state import LoopState


def test_default_yaml_spells_out_the_dataclass_defaults():
    # configs/default.yaml is the documented recipe; the dataclass defaults must be the same recipe.
    assert load_config(ROOT / "configs" / "default.yaml").to_dict() == Config().to_dict()


def test_robust_yaml_is_the_default_trained_on_corruptions():
    # docs/robustness.md's robust column was trained as `train.py augment.corrupt=0.3`: the file must be that recipe.
    robust = flatten(load_config(ROOT / "configs" / "robust.yaml").to_dict())
    assert {k: v for k, v in robust.items() if v != flatten(Config().to_dict())[k]} == {"augment.corrupt": 0.3}


@pytest.mark.parametrize("name", ["default", "quick", "quick-robust", "smoke", "robust"])
def test_shipped_configs_load(name):
    # Every value the file spells out is the value the run gets.
    path = ROOT / "configs" / f"{name}.yaml"
    loaded = flatten(load_config(path).to_dict())
    assert all(loaded[key] == value for key, value in flatten(yaml.safe_load(path.read_text())).items())


def test_overrides_parse_yaml_values_and_apply_last():
    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      ["optim.lr=3e-3", "model.channels=[4, 8]", "model.channels_last=false", "run.name=abc",
                       "train.epochs=2", "train.epochs=3"])
    assert cfg.optim.lr == 0.003 and isinstance(cfg.optim.lr, float)
    assert cfg.model.channels == [4, 8]
    assert cfg.model.channels_last is False
    assert cfg.run.name == "abc"
    assert cfg.train.epochs == 3
    assert cfg.data.train_limit == 8192  # from the file, untouched


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


def test_parse_override_keeps_non_yaml_text():
    assert parse_override("run.name=a: b: c") == (["run", "name"], "a: b: c")


def _error(overrides=(), path=None) -> str:
    with pytest.raises(UsageError) as info:
        load_config(path, overrides)
    line = info.value.line()
    assert line.startswith("mnist-sum: error: ") and "\n" not in line
    return line


def test_unknown_key_suggests_the_closest():
    assert "did you mean optim.lr?" in _error(["optim.lrr=0.1"])
    assert "did you mean train.epochs?" in _error(["train.epoch=3"])
    assert "unknown config key 'nonsense'" in _error(["nonsense=1"])


@pytest.mark.parametrize("override, words", [
    ("train.epochs=two", "train.epochs must be an integer"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("train.epochs=true", "train.epochs must be an integer"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("model.channels=32", "model.channels must be a list of integers"),
    ("model.channels=[32, x]", "model.channels must be a list of integers"),
    ("optim.schedule=linear", "optim.schedule must be one of 'onecycle', 'cosine', 'constant'"),
    ("model.channels_last=yes please", "model.channels_last must be true or false"),
    ("optim=1", "optim must be a section of keys"),
    ("optim.lr.x=1", "optim.lr must be a number"),
])
def test_wrong_types_are_named(override, words):
    assert words in _error([override])


@pytest.mark.parametrize("override, words", [
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.global_batch_size=0", "train.global_batch_size must be >= 1"),
    ("data.val_size=60000", "data.val_size must be < 60000"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("model.channels=[]", "model.channels must be a non-empty list"),
    ("model.norm_group=0", "model.norm_group must be >= 1"),
    ("model.norm=ghost model.norm_group=48", "train.global_batch_size=128 is not a whole number of BatchNorm groups of 48"),
    ("model.norm=batch", "model.norm must be one of 'none', 'ghost', 'layer'"),
    ("model.test_shifts=4", "model.test_shifts must be in 0..3"),
])
def test_out_of_range_values_are_refused(override, words):
    assert words in _error(override.split())


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1"])
def test_malformed_override(text):
    assert "cannot read override" in _error([text])


def test_missing_and_broken_yaml(tmp_path):
    assert "not found" in _error(path=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    assert "is not valid YAML" in _error(path=bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "must hold sections" in _error(path=listy)


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(ROOT / "configs" / "quick.yaml")
    tree = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    flat = [f"{s}.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for s, keys in tree.items() for k, v in keys.items()]
    assert load_config(None, flat) == cfg


def test_a_saved_config_that_predates_a_key_keeps_its_former_meaning(tmp_path):
    # A run's config.yaml and checkpoints list every key the code had; runs saved before the bilinear sum head
    # trained the MLP, so resuming one must rebuild the MLP (a user's YAML without the key gets today's default).
    old = load_config(None).to_dict()
    del old["model"]["sum_head"], old["model"]["test_shifts"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "config.yaml", saved=True).model.sum_head == "mlp"
    assert load_config(tmp_path / "config.yaml", saved=True).model.test_shifts == 0  # scored on the image alone
    assert load_config(tmp_path / "config.yaml").model.sum_head == "bilinear"
    assert load_config(tmp_path / "config.yaml", ["model.sum_head=bilinear"], saved=True).model.sum_head == "bilinear"

    # Runs from before model.norm normalised over the whole global batch: one ghost BatchNorm group per batch.
    del old["model"]["norm"], old["model"]["norm_group"]
    old["train"]["global_batch_size"] = 256
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    model = load_config(tmp_path / "config.yaml", saved=True).model
    assert (model.norm, model.norm_group) == ("ghost", 256)

    state = LoopState(config=old, config_name="default", world_size=1)
    _check_same_recipe(load_config(None, ["model.sum_head=mlp", "model.norm=ghost", "model.norm_group=256",
                                          "model.test_shifts=0", "train.global_batch_size=256"]),
                       state, tmp_path / "step_000010")
    with pytest.raises(UsageError, match=r"model.sum_head: 'mlp' -> 'bilinear'"):
        _check_same_recipe(load_config(None, ["train.global_batch_size=256"]), state, tmp_path / "step_000010")


def test_a_removed_key_is_dropped_from_a_saved_config_and_explained_to_a_user(tmp_path):
    # Runs saved before batches moved to the device list data.num_workers; they still resume and evaluate.
    old = load_config(None).to_dict()
    old["data"]["num_workers"] = 2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "config.yaml", saved=True) == load_config(None)
    _check_same_recipe(load_config(None), LoopState(config=old, config_name="default", world_size=1), tmp_path)
    for source in ({"path": tmp_path / "config.yaml"}, {"overrides": ["data.num_workers=2"]}):
        with pytest.raises(UsageError) as info:
            load_config(**source)
        assert info.value.line() == ("mnist-sum: error: config key 'data.num_workers' no longer exists: batches are cut on "
                                     "the training device (mnist_sum/data/batches.py); there are no loader workers (remove "
                                     "data.num_workers)")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    result = run_python(["train.py", "--config", "configs/smoke.yaml", "optim.lrr=1", f"run.dir={tmp_path}/r"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mnist-sum: error: unknown config key 'optim.lrr' (did you mean optim.lr?)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()  # nothing was created for a run that never started


def test_overrides_may_come_before_and_after_resume(capsys):
    # `train.py --config X a=1 --resume auto run.dir=...`: both groups of overrides are read (the second one
    # was refused as "unrecognized arguments" before).
    from conftest import train_in_process

    code, err = train_in_process(["--config", str(ROOT / "configs" / "smoke.yaml"), "optim.lr=0.002", "--resume", "auto",
                                  "optim.lrr=1"], capsys)
    assert code == 2 and err.strip().splitlines() == ["mnist-sum: error: unknown config key 'optim.lrr' (did you mean "
                                                      "optim.lr?)"]


def test_each_process_needs_a_sample_or_a_whole_batchnorm_group():
    cfg = load_config(None, ["train.global_batch_size=64", "model.norm=ghost"])
    check_world(cfg, 4)  # 4 groups of 16
    with pytest.raises(UsageError, match="leaves some of the 5 processes without a BatchNorm group of 16"):
        check_world(cfg, 5)
    layer = load_config(None, ["train.global_batch_size=5"])  # no groups: one sample each
    check_world(layer, 5)
    with pytest.raises(UsageError, match="leaves some of the 6 processes without a sample"):
        check_world(layer, 6)
