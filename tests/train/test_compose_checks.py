"""Every bad value of `python sweep.py` is one line at compose time, before any model loads: key typos
(with the closest key), wrong types, named choices, signs, regexes, and each value of a sweep."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import sweep_cmd


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["rnak=8"], "rnak=8: no such config key; did you mean rank?"),
        (["train.stpes=10"], "train.stpes=10: no such config key; did you mean train.steps?"),
        (["train.steps=ten"], "config key train.steps: Value 'ten' of type 'str' could not be converted to "
                              "Integer"),
        (["rank=1,0"], "rank=0 must be at least 1"),
        (["lora.init=bogus"], "lora.init=bogus is not one of kaiming, gaussian, pissa, milora, olora"),
        (["task.source=bogus"], "task.source=bogus is not one of bbc, plays, shakespeare, text, hf"),
        (["train.threads=-1"], "train.threads=-1 must be 0 (torch's default) or positive"),
        (["train.weight_decay=-1"], "train.weight_decay=-1.0 must be a finite number of at least 0"),
        (["lora.targets='(query'"], "lora.targets=(query is a regular expression that does not compile"),
        (["task.max_val=-1"], "task.max_val=-1 must be at least 1 (or null: all)"),
        (["train.lr=0.1,-1"], "train.lr=-1.0 must be a finite positive number"),
    ],
)  # fmt: skip
def test_a_bad_override_is_one_line_before_anything_runs(tmp_path, overrides, line):
    proc = subprocess.run(
        sweep_cmd(*overrides, "experiment=smoke", f"runs_dir={tmp_path}"), cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"lorascope: error: {line}"]
    assert not any(tmp_path.rglob("config.yaml"))  # no run was started


def test_a_target_inside_the_trained_head_is_one_line(tiny_bert):
    from transformers import BertForSequenceClassification

    from lorascope.errors import LorascopeError
    from lorascope.lora import add_lora

    model = BertForSequenceClassification.from_pretrained(tiny_bert)
    with pytest.raises(LorascopeError, match="target classifier is in .*classifier.*trains whole"):
        add_lora(model, ["classifier"], rank=2, alpha=4, trainable=["classifier"])


def test_presets_launchers_and_hydra_settings_are_left_to_hydra():
    from lorascope import hydra_glue
    from lorascope.overrides import check_overrides

    hydra_glue.register()  # as sweep.py does: the schema in Hydra's ConfigStore
    check_overrides(["method=full", "rank=0,1"])  # swept values are checked in the composed config

    check_overrides(
        ["rank=1,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=hf", "model.name_or_path=x",
         "experiment=smoke", "+extra=1", "~seed", "lora.targets=[query,value]", "seed=range(0,3)"]
    )  # fmt: skip
