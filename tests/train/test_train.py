"""train() and launch() on tiny random models: the run folder, determinism, failures, resume rules."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from conftest import tiny_config

from lorascope import run_format, runs
from lorascope.launch import launch
from lorascope.train import lr_lambda, train


def _cfg(model, data, **train_kw):
    return tiny_config(model, data, train=train_kw)


def test_run_folder_is_complete_and_loads(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    summary = train(_cfg(tiny_bert, topic_jsonl, snapshot_every=3, eval_every=3), out)
    assert summary["status"] == "complete" and runs.is_complete(out)
    for key in ("val_accuracy", "wall_time_s", "tokens_per_s", "peak_memory_mb", "trainable_params"):
        assert key in summary
    run = runs.load_run(out)
    assert len(run.adapters) == 4  # 2 layers x (query, value)
    name = "bert.encoder.layer.0.attention.self.query"
    assert run.adapters[name].A.shape == (2, 32) and run.adapters[name].B.shape == (32, 2)
    assert torch.count_nonzero(run.init[name].B) == 0  # B0 = 0
    assert torch.count_nonzero(run.adapters[name].B) > 0  # it trained
    assert run.meta["alpha"] == 16 and run.meta["scaling"] == 8.0  # s = alpha / r
    assert set(run.meta["base_fingerprint"]) == set(run.adapters)
    assert run.meta["model_class"] == "AutoModelForSequenceClassification" and run.meta["num_labels"] == 3
    assert sorted(run.checkpoints()) == [3, 6]
    head, _ = run_format.read_tensors(out / run_format.HEAD_FILE)
    assert "classifier.weight" in head
    steps = [json.loads(line)["step"] for line in (out / run_format.METRICS_FILE).read_text().splitlines()]
    assert steps[0] == 0 and steps[-1] == 6
    assert run.config["rank"] == 2 and run.config["lora"]["targets"] == ["query", "value"]


def _payload(path):
    """The raw tensor bytes of a safetensors file (after its 8-byte length and JSON header)."""
    raw = path.read_bytes()
    return raw[8 + struct.unpack("<Q", raw[:8])[0] :]


def test_same_seed_gives_identical_adapters(tiny_bert, topic_jsonl, tmp_path):
    cfg = _cfg(tiny_bert, topic_jsonl, steps=3)
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    for f in (run_format.ADAPTER_FILE, run_format.INIT_FILE, run_format.HEAD_FILE):  # bit-identical files
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    train({**cfg, "seed": 1}, tmp_path / "c")
    assert _payload(tmp_path / "a" / run_format.INIT_FILE) != _payload(tmp_path / "c" / run_format.INIT_FILE)


def _shared_rows(A1, A2) -> int:
    return sum(bool((A2 == row).all(dim=1).any()) for row in A1)


def test_runs_of_a_sweep_start_independently(tiny_bert, topic_jsonl, tmp_path):
    """No module's A0 at one rank or seed equals or shares rows with another run's."""
    inits = {}
    for rank, seed in [(2, 0), (4, 0), (4, 1)]:
        cfg = {**_cfg(tiny_bert, topic_jsonl, steps=1), "rank": rank, "seed": seed}
        train(cfg, tmp_path / f"r{rank}-s{seed}")
        inits[(rank, seed)] = runs.load_run(tmp_path / f"r{rank}-s{seed}").init
    for a, b in [((2, 0), (4, 0)), ((4, 0), (4, 1)), ((2, 0), (4, 1))]:
        for m in inits[a]:
            assert _shared_rows(inits[a][m].A, inits[b][m].A) == 0, (a, b, m)


def test_every_training_record_has_grad_norm(tiny_bert, topic_jsonl, tmp_path):
    train(_cfg(tiny_bert, topic_jsonl, steps=4, eval_every=2, log_every=1), tmp_path / "r")
    records = [
        json.loads(line) for line in (tmp_path / "r" / run_format.METRICS_FILE).read_text().splitlines()
    ]
    training = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in training] == [1, 2, 3, 4]
    assert all("grad_norm" in r and "loss" in r for r in training)
    assert all("val_accuracy" in r for r in training if r["step"] % 2 == 0)  # evaluation steps


def test_causal_lm_run_lowers_loss_and_rslora_scaling(tiny_llama, corpus_txt, tmp_path):
    cfg = {
        "rank": 4,
        "model": {"name": "tiny", "name_or_path": str(tiny_llama), "targets": ["q_proj", "v_proj"]},
        "task": {"name": "corpus", "source": "text", "kind": "lm", "path": str(corpus_txt)},
        "lora": {"rslora": True, "init": "gaussian"},
        "train": {"steps": 8, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "threads": 1},
    }
    s = train(cfg, tmp_path / "lm")
    assert s["val_loss"] < s["initial_eval"]["val_loss"] and "val_perplexity" in s
    run = runs.load_run(tmp_path / "lm")
    assert run.meta["scaling"] == pytest.approx(16 / 2)  # alpha / sqrt(4)
    assert run.adapters["model.layers.0.self_attn.v_proj"].B.shape == (16, 4)  # GQA: 32 -> 16


@pytest.mark.parametrize("bad, why", [({"lr": 1e30}, "loss is nan"), ({"fail_at_step": 2}, "step 2")])
def test_failure_is_recorded_not_raised(tiny_bert, topic_jsonl, tmp_path, bad, why):
    out = tmp_path / "r2-s0"
    s = launch(_cfg(tiny_bert, topic_jsonl, **bad), out)
    assert s["status"] == "failed" and why in s["reason"]
    assert run_format.read_summary(out)["status"] == "failed" and not runs.is_complete(out)


def test_a_bad_value_fails_before_the_run_folder_is_touched(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    s = launch(_cfg(tiny_bert, topic_jsonl, lr=float("nan")), out)
    assert s["status"] == "failed" and "train.lr=nan" in s["reason"]
    assert not out.exists()


def test_launch_skips_same_refuses_different_redoes_incomplete(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    cfg = _cfg(tiny_bert, topic_jsonl, steps=2)
    assert launch(cfg, out)["status"] == "complete"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert launch(cfg, out)["status"] == "skipped"
    other = launch(_cfg(tiny_bert, topic_jsonl, steps=3), out)
    assert other["status"] == "failed" and "name=" in other["reason"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    (out / run_format.SUMMARY_FILE).unlink()  # now it is an interrupted run
    (out / "stale.tmp").write_text("x")
    assert launch(cfg, out)["status"] == "complete" and not (out / "stale.tmp").exists()


def test_bad_user_input_is_a_clear_failure(tiny_bert, topic_jsonl, tmp_path):
    s = launch({**_cfg(tiny_bert, topic_jsonl), "model": {"name_or_path": "/no/such/model"}}, tmp_path / "x")
    assert s["status"] == "failed" and "no such local folder" in s["reason"]
    s = launch({**_cfg(tiny_bert, topic_jsonl), "rank": 0}, tmp_path / "y")
    assert s["status"] == "failed" and "rank" in s["reason"]


def test_schedule_warms_up_then_decays():
    f = lr_lambda(10, 0.2)
    assert [round(f(t), 3) for t in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]


@pytest.mark.slow
def test_embedded_minilm_on_bbc_end_to_end(tmp_path):
    """The real default (MiniLM + BBC News), a few tiny steps: a complete run the analysis can use."""
    from lorascope.base_model import base_weights

    cfg = {
        "rank": 4,
        "train": {"steps": 2, "batch_size": 4, "seq_len": 32, "eval_batch_size": 32},
        "task": {"max_val": 32},
    }
    s = train(cfg, tmp_path / "r4-s0")
    assert s["status"] == "complete" and 0.0 <= s["val_accuracy"] <= 1.0
    run = runs.load_run(tmp_path / "r4-s0")
    assert run.meta["base_model"] == "minilm" and run.meta["num_labels"] == 5
    assert run.meta["classes"] == ["business", "entertainment", "politics", "sports", "tech"]
    names = sorted(run.adapters)
    assert len(names) == 12 and all(n.endswith((".query", ".value")) for n in names)
    W = base_weights(run, names[:2])  # offline, fingerprint-checked
    assert W[names[0]].shape == (384, 384)
