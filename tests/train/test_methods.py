"""Full fine-tuning beside LoRA, and LoRA's learning-rate and freezing knobs, on tiny models."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from conftest import sweep_cmd, tiny_config, tiny_overrides

from lorascope import data, models, run_format, runs
from lorascope.cli import main
from lorascope.config import from_dict
from lorascope.methods import LoRAUpdate
from lorascope.train import train

TARGETS = ["query", "value"]


def _cfg(model, data_path, **kw):
    return tiny_config(model, data_path, steps=4, **kw)


def test_full_fine_tuning_saves_the_change_of_the_trained_weights(tiny_bert, topic_jsonl, tmp_path):
    cfg = _cfg(tiny_bert, topic_jsonl, method="full", full={"lr": 1e-3})
    summary = train(cfg, tmp_path / "full-s0")
    assert summary["status"] == "complete" and summary["method"] == "full"
    run = runs.load_run(tmp_path / "full-s0")
    assert run.method == "full" and not (tmp_path / "full-s0" / run_format.ADAPTER_FILE).exists()
    assert run.config["rank"] is None and run.config["lora"] is None  # what does not apply is null
    names = [f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in TARGETS]
    assert sorted(run.adapters) == sorted(names)  # only the targets' W changed (and the head)
    assert all(float(run.adapters[m].delta.norm()) > 0 for m in names)
    # W_0 + ΔW with the saved head reproduces the trained model's held-out loss
    tok = models.load_tokenizer(str(tiny_bert))
    task = data.build_task(cfg["task"], tok, 16)
    model = models.load_model(str(tiny_bert), models.SEQ_CLS, task.num_labels)
    head, _ = run_format.read_tensors(tmp_path / "full-s0" / run_format.HEAD_FILE)
    with torch.no_grad():
        for m in names:
            model.get_submodule(m).weight.add_(run.adapters[m].delta)
        model.load_state_dict(head, strict=False)
    evals = data.evaluate(model, task, 64, torch.device("cpu"))
    assert evals["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert run.meta["base_fingerprint"][names[0]] == pytest.approx(
        float(
            models.load_model(str(tiny_bert), "AutoModel")
            .get_submodule(names[0].removeprefix("bert."))
            .weight.norm()
        )
    )


def test_a_full_run_appears_once_in_a_sweep_of_ranks(tiny_bert, topic_jsonl, tmp_path):
    runs_dir = tmp_path / "runs"
    proc = subprocess.run(
        sweep_cmd("method=lora,full", "rank=1,2", *tiny_overrides(tiny_bert, topic_jsonl, runs_dir)),
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    sweep = runs_dir / "tiny-topics"
    assert [p.name for p in runs.list_runs(sweep)] == ["r1-s0", "r2-s0", "full-s0"]
    assert "sweep done: 3 complete" in out and "skipped" not in out  # the second full job is not launched


def test_factor_analyses_do_not_apply_to_a_full_run(tiny_bert, topic_jsonl, tmp_path, capsys):
    train(_cfg(tiny_bert, topic_jsonl, method="full"), tmp_path / "full-s0")
    train(_cfg(tiny_bert, topic_jsonl), tmp_path / "r2-s0")
    full, lora = str(tmp_path / "full-s0"), str(tmp_path / "r2-s0")
    capsys.readouterr()  # the trainings' progress bars
    for factor in ("A", "B", "dA"):
        assert main(["similarity", full, lora, "--factor", factor]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "does not apply to a full fine-tuning run" in err
    assert main(["similarity", full, lora, "--factor", "dW-right", "--out", str(tmp_path / "o")]) == 0
    summary = capsys.readouterr().out
    assert "full-s0 vs r2-s0" in summary
    assert main(["spectrum", full, "--out", str(tmp_path / "s")]) == 0
    assert main(["export", full, str(tmp_path / "peft")]) == 2
    assert "dense ΔW" in capsys.readouterr().err


def test_lora_plus_puts_b_at_a_multiple_of_as_learning_rate(tiny_bert):
    cfg = from_dict({"rank": 2, "lora": {"lr_ratio": 16.0}})
    model = models.load_model(str(tiny_bert), models.SEQ_CLS, 3)
    groups = {g["name"]: g for g in LoRAUpdate(model, cfg, ["classifier"]).param_groups(1e-3)}
    assert groups["A"]["lr"] == 1e-3 and groups["B"]["lr"] == pytest.approx(16e-3)


def test_frozen_a_stays_at_its_start_and_only_b_moves(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    train(_cfg(tiny_bert, topic_jsonl, lora={"train_A": False}, train={"log_every": 1}), out)
    run = runs.load_run(out)
    assert run.meta["train_A"] is False and run.meta["train_B"] is True
    for m, a in run.adapters.items():
        assert torch.equal(a.A, run.init[m].A)  # exactly A0
        assert float(a.B.norm()) > 0
    records = [json.loads(line) for line in (out / run_format.METRICS_FILE).read_text().splitlines()][1:]
    assert all("grad_norm_B" in r and "update_norm_B" in r and r["update_norm_B"] > 0 for r in records)
    assert not any("grad_norm_A" in r or "update_norm_A" in r for r in records)
    assert all(r["dA_rel"] == 0.0 for r in records)


def test_frozen_b_starts_random_and_a_starts_at_zero(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    train(_cfg(tiny_bert, topic_jsonl, lora={"train_B": False}), out)
    run = runs.load_run(out)
    for m, a in run.adapters.items():
        assert torch.equal(a.B, run.init[m].B) and float(a.B.norm()) > 0  # frozen, random
        assert torch.count_nonzero(run.init[m].A) == 0 and float(a.A.norm()) > 0  # A0 = 0, then learned
    with pytest.raises(Exception, match="cannot both be false"):
        from_dict({"lora": {"train_A": False, "train_B": False}})


def test_step_statistics_agree_with_the_snapshot_files(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    train(_cfg(tiny_bert, topic_jsonl, train={"steps": 4, "log_every": 1, "snapshot_every": 2}), out)
    records = {
        r["step"]: r for r in map(json.loads, (out / run_format.METRICS_FILE).read_text().splitlines())
    }
    run = runs.load_run(out)
    snap = run.load_checkpoint(2)
    dW = sum(float(a.delta_weight().double().norm() ** 2) for a in snap.values()) ** 0.5
    B = sum(float(a.B.double().norm() ** 2) for a in snap.values()) ** 0.5
    dA = sum(float((a.A - run.init[m].A).double().norm() ** 2) for m, a in snap.items()) ** 0.5
    A0 = sum(float(run.init[m].A.double().norm() ** 2) for m in snap) ** 0.5
    r = records[2]
    assert r["dW_norm"] == pytest.approx(dW, rel=1e-5) and r["B_norm"] == pytest.approx(B, rel=1e-5)
    assert r["dA_rel"] == pytest.approx(dA / A0, rel=1e-5)
    queries = [m for m in snap if m.endswith("query")]
    q = sum(float(snap[m].delta_weight().double().norm() ** 2) for m in queries) ** 0.5
    assert r["dW_norm/query"] == pytest.approx(q, rel=1e-5)
    for key in ("grad_norm_A", "grad_norm_B", "update_norm_A", "update_norm_B", "grad_norm_A/value"):
        assert r[key] > 0, key
    # the update of step 2 is the difference of the factors before and after it (snapshot after step 2)
    assert records[1]["update_norm_B"] > 0


def test_trajectory_command_writes_the_frame_of_the_library(tiny_bert, topic_jsonl, tmp_path, capsys):
    import pandas as pd

    from lorascope.compare.trajectories import run_trajectory

    out = tmp_path / "r2-s0"
    train(_cfg(tiny_bert, topic_jsonl, train={"steps": 4, "snapshot_every": 2}), out)
    assert main(["trajectory", str(out), "--out", str(tmp_path / "t"), "--k", "2"]) == 0
    assert "first step" in capsys.readouterr().out
    written = pd.read_csv(tmp_path / "t" / "trajectory.csv")
    frame = run_trajectory(out, k=2)
    assert sorted(set(written.step)) == [0, 2, 4]
    pd.testing.assert_series_equal(written.dW_norm, frame.dW_norm, check_names=False, rtol=1e-9)
    assert (tmp_path / "t" / "trajectory.png").is_file() and (
        tmp_path / "t" / "trajectory_first_step.md"
    ).is_file()
