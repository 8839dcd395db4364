"""Runs that freeze A (`lora.train_A=false`, Zhu et al. 2024's test) get a folder of their own and a
place of their own in the paper's Sweep: a real tiny sweep trains both variants side by side."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import sweep_cmd, tiny_overrides
from hydra import compose, initialize_config_dir

from lorascope import hydra_glue, runs
from lorascope.config import from_dict, run_folder
from lorascope.paper.findings_asymmetry import frozen_a_section
from lorascope.paper.sweep import Sweep

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
CONF = str(Path(__file__).resolve().parents[2] / "conf")
hydra_glue.register()


def test_run_folder_names_say_which_factor_is_frozen():
    assert run_folder("lora", 8, 0) == "r8-s0"
    assert run_folder("lora", 8, 2, False, True) == "r8-s2-frozenA"
    assert run_folder("lora", 8, 2, True, False) == "r8-s2-frozenB"
    assert run_folder("full", None, 1, False, True) == "full-s1"  # no factors to freeze
    assert from_dict({"rank": 4, "lora": {"train_A": False}}).run_name == "r4-s0-frozenA"
    assert from_dict({"method": "full"}).run_name == "full-s0"
    assert runs.parse_run_name("r8-s2-frozenA") == (8, 2) and runs.parse_run_name("r8-s2-frozen") is None


def test_hydra_composes_the_frozen_a_folder():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        plain = compose("config", overrides=["rank=8", "seed=1"], return_hydra_config=True)
        frozen = compose(
            "config", overrides=["rank=8", "seed=1", "lora.train_A=false"], return_hydra_config=True
        )
        full = compose("config", overrides=["method=full", "seed=1"], return_hydra_config=True)
    assert plain.hydra.sweep.subdir == "r8-s1" and frozen.hydra.sweep.subdir == "r8-s1-frozenA"
    assert full.hydra.sweep.subdir == "full-s1"


def test_a_sweep_trains_frozen_and_trained_a_side_by_side(tiny_bert, topic_jsonl, tmp_path):
    runs_dir = tmp_path / "runs"
    overrides = tiny_overrides(tiny_bert, topic_jsonl, runs_dir, "rank=2", "lora.train_A=true,false")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        sweep_cmd(*overrides), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    folder = runs_dir / "tiny-topics"
    assert [p.name for p in runs.list_runs(folder)] == ["r2-s0", "r2-s0-frozenA"]
    sweep = Sweep.load(folder)
    assert not sweep.skipped and list(sweep.runs) == [(2, 0)] and list(sweep.frozen_A) == [(2, 0)]
    frozen, trained = sweep.frozen_A[(2, 0)], sweep.runs[(2, 0)]
    for m, a in frozen.adapters.items():
        assert torch.equal(a.A, frozen.init[m].A) and float(a.B.norm()) > 0  # only B learned
        assert torch.equal(frozen.init[m].A, trained.init[m].A)  # one seed, one A0: a paired test
        assert not torch.equal(trained.adapters[m].A, trained.init[m].A)
    text = "\n".join(frozen_a_section(sweep))
    assert "| 2 | 0 | val_accuracy |" in text and "one seed: no interval" in text
