"""The Hydra config composes for every preset, and the schema catches type errors at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lorascope import config, hydra_glue

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
CONF = str(Path(__file__).resolve().parents[2] / "conf")
hydra_glue.register()


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def _resolved(cfg) -> dict:
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("hydra", None)
    return d


def test_defaults_follow_the_paper():
    cfg = _resolved(_compose())
    assert cfg["model"]["name_or_path"] == "minilm" and cfg["task"]["name"] == "bbc"
    assert cfg["lora"]["targets"] == ["query", "value"]  # W_q, W_v
    assert cfg["alpha"] == 16 and cfg["lora"]["init"] == "kaiming" and cfg["lora"]["rslora"] is False
    assert cfg["name"] == "minilm-bbc" and cfg["run_name"] == "r8-s0"
    assert config.from_dict(cfg).train.steps == cfg["train"]["steps"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=smollm2"],
        ["model=hf", "model.name_or_path=/some/folder"],
        ["task=shakespeare"],
        ["task=plays"],
        ["task=text", "task.path=x.jsonl", "task.label_field=label"],
        ["lora=paper"],
        ["lora=rslora"],
        ["experiment=paper_ranks"],
        ["experiment=paper_ranks", "lora=rslora"],
        ["experiment=paper_ranks_alpha", "rank=8"],
        ["experiment=shakespeare"],
        ["experiment=smoke"],
        ["hydra/launcher=joblib"],
        ["hydra/launcher=submitit_slurm"],
    ],
)
def test_every_preset_composes(overrides):
    cfg = _compose(*overrides, hydra=True)
    plain = _resolved(cfg)
    config.from_dict(plain)  # the library accepts what Hydra composes
    assert cfg.hydra.mode.name == "MULTIRUN"
    if "model=smollm2" in overrides or "experiment=shakespeare" in overrides:
        assert plain["lora"]["targets"] == ["q_proj", "v_proj"]
    if "task=shakespeare" in overrides:
        assert plain["task"]["kind"] == "lm" and plain["train"]["batch_size"] == 8
    if "lora=rslora" in overrides:
        assert plain["lora"]["rslora"] is True
    if overrides[0].startswith("experiment=paper_ranks"):  # three seeds: an interval for every finding
        assert len(str(cfg.hydra.sweeper.params.seed).split(",")) >= 3
    if "experiment=paper_ranks_alpha" in overrides:  # α ∝ r: s = α/r the same at every rank
        assert plain["alpha"] == 16.0 and plain["name"].endswith("alpha-prop-r")


def test_launcher_presets_point_at_the_plugins():
    joblib = _compose("hydra/launcher=joblib", hydra=True).hydra.launcher
    slurm = _compose("hydra/launcher=submitit_slurm", hydra=True).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher")
    assert slurm._target_.endswith("SlurmLauncher")


def test_command_line_keys_and_run_folder():
    cfg = _compose(
        "rank=4", "alpha=32", "seed=3", "lora.targets=[query,key,value]", "lora.init=gaussian",
        "lora.rslora=true", "lora.dropout=0.1", "train.steps=7", "train.lr=0.01",
        "train.batch_size=2", "train.seq_len=64", "train.eval_every=3", "train.snapshot_every=2",
        "train.device=cpu", "train.dtype=bf16", "runs_dir=/tmp/x",
        hydra=True,
    )  # fmt: skip
    plain = _resolved(cfg)
    assert plain["lora"]["targets"] == ["query", "key", "value"] and plain["train"]["lr"] == 0.01
    assert cfg.hydra.sweep.dir == "/tmp/x/minilm-bbc" and cfg.hydra.sweep.subdir == "r4-s3"
    assert _compose("name=ablation", hydra=True).hydra.sweep.dir == "runs/ablation"


@pytest.mark.parametrize("bad", ["train.steps=ten", "rank=1.5", "lora.rslora=maybe", "nosuchkey=1"])
def test_schema_rejects_bad_values_at_compose_time(bad):
    with pytest.raises(ConfigCompositionException):
        _compose(bad)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(config.LorascopeError, match="train.stepz"):
        config.from_dict({"train": {"stepz": 3}})
