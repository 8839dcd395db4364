"""Training on the bases people adapt: the stored precision, gradient checkpointing, a 4-bit/8-bit base,
and one run over several processes (torch.distributed, gloo on the CPU)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from conftest import sweep_cmd, tiny_config, tiny_overrides

from lorascope import models, run_format, runs
from lorascope.config import from_dict
from lorascope.errors import LorascopeError
from lorascope.launch import launch
from lorascope.methods import build_update
from lorascope.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes absent")


@pytest.fixture(scope="module")
def bf16_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama saved in bf16, as 7B checkpoints are stored."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama-bf16")
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(path)
    return _with_tokenizer(path, tiny_llama)


def _with_tokenizer(path, source):
    for f in source.iterdir():
        if "token" in f.name:
            shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="module")
def wide_llama(tiny_llama, tmp_path_factory):
    """A tiny Llama of hidden 128: bitsandbytes' CPU kernels quantize in blocks of 64 inputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("wide-llama")
    config = LlamaConfig.from_pretrained(tiny_llama)
    config.update({"hidden_size": 128, "intermediate_size": 256, "head_dim": 32})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return _with_tokenizer(path, tiny_llama)


@pytest.fixture(scope="module")
def dropless_bert(tiny_bert, tmp_path_factory):
    """The tiny BERT without dropout: each process draws its own dropout masks, so only without
    dropout can N processes compute exactly what one does."""
    path = tmp_path_factory.mktemp("tiny-bert-nodrop")
    for f in tiny_bert.iterdir():
        shutil.copy(f, path / f.name)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _lm_config(model, corpus, steps=3, **train_kw):
    return {
        "rank": 4,
        "model": {"name": "tiny", "name_or_path": str(model), "targets": ["q_proj", "v_proj"]},
        "task": {"name": "corpus", "source": "text", "kind": "lm", "path": str(corpus)},
        "train": {"steps": steps, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "threads": 1, "log_every": 1,
                  **train_kw},
    }  # fmt: skip


def _losses(run_dir):
    return [
        r["loss"]
        for r in run_format.read_metrics(run_dir).to_dict("records")
        if r.get("loss") == r.get("loss")
    ]


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype, want", [("auto", torch.bfloat16), ("fp32", torch.float32)])
def test_base_keeps_its_stored_precision_and_lora_stays_fp32(bf16_llama, dtype, want):
    cfg = from_dict({**_lm_config(bf16_llama, "unused"), "model": {"name_or_path": str(bf16_llama),
                     "targets": ["q_proj", "v_proj"], "dtype": dtype}})  # fmt: skip
    model = models.load_model(str(bf16_llama), models.CAUSAL_LM, None, cfg.model.dtype)
    update = build_update(model, cfg, [])
    layer = update.wrapped["model.layers.0.self_attn.q_proj"]
    assert layer.base.weight.dtype == want
    assert model.model.embed_tokens.weight.dtype == want
    assert layer.A.dtype == layer.B.dtype == torch.float32
    assert models.base_dtype(model) == {torch.bfloat16: "bf16", torch.float32: "fp32"}[want]


def test_bf16_run_records_its_base_and_its_fingerprint_is_the_stored_w(bf16_llama, corpus_txt, tmp_path):
    s = train(_lm_config(bf16_llama, corpus_txt, dtype="bf16"), tmp_path / "r")
    assert s["status"] == "complete" and s["base_dtype"] == "bf16"
    run = runs.load_run(tmp_path / "r")
    assert run.meta["base_dtype"] == "bf16"
    assert run.adapters["model.layers.0.self_attn.q_proj"].A.dtype == torch.float32
    from lorascope.base_model import Checkpoint

    stored = Checkpoint(bf16_llama).weight("model.layers.1.self_attn.v_proj", dtype=None)
    assert stored.dtype == torch.bfloat16
    assert run.meta["base_fingerprint"]["model.layers.1.self_attn.v_proj"] == pytest.approx(
        run_format.base_fingerprint(stored), rel=1e-12
    )


def test_full_fine_tuning_on_bf16_keeps_fp32_masters_of_the_trained_w(bf16_llama, corpus_txt, tmp_path):
    cfg = {**_lm_config(bf16_llama, corpus_txt, steps=2), "method": "full", "full": {"lr": 1e-3}}
    s = train(cfg, tmp_path / "full")
    assert s["status"] == "complete" and s["base_dtype"] == "bf16"
    delta = runs.load_run(tmp_path / "full").adapters["model.layers.0.self_attn.q_proj"].delta_weight()
    assert delta.dtype == torch.float32 and float(delta.abs().max()) > 0
    # Updates far below bf16's resolution of W survive: the fp32 master accumulates them.
    W = models.load_model(str(bf16_llama), models.CAUSAL_LM, None, "auto").model.layers[0].self_attn.q_proj
    spacing = W.weight.float().abs().max() * 2**-8
    assert float(delta.abs().min()) < float(spacing)


# ----------------------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_gives_the_same_losses(tiny_llama, corpus_txt, tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    calls = []
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, *a, **kw):
        calls.append(1)
        return forward(self, *a, **kw)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    plain = train(_lm_config(tiny_llama, corpus_txt, steps=4), tmp_path / "plain")
    n_plain = len(calls)
    # In a sweep folder of its own: beside "plain" it would reuse plain's step-0 evaluation (same network).
    ckpt_cfg = _lm_config(tiny_llama, corpus_txt, steps=4, grad_checkpointing=True)
    ckpt = train(ckpt_cfg, tmp_path / "own" / "ckpt")
    # Each training step runs each of the 2 layers once more, recomputing it in backward.
    assert len(calls) - n_plain == n_plain + 4 * 2
    assert ckpt["grad_checkpointing"] is True and plain["grad_checkpointing"] is False
    a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "own" / "ckpt")
    assert len(a) == 4 and a == pytest.approx(b, abs=1e-5)
    A1 = runs.load_run(tmp_path / "plain").adapters["model.layers.1.self_attn.v_proj"].B
    A2 = runs.load_run(tmp_path / "own" / "ckpt").adapters["model.layers.1.self_attn.v_proj"].B
    assert float((A1 - A2).abs().max()) < 1e-5 and float(A1.abs().max()) > 0  # LoRA got gradients


# ----------------------------------------------------------------------------- quantized bases


@needs_bnb
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_qlora_trains_on_a_quantized_base_and_analyses_read_the_original_w(
    wide_llama, corpus_txt, tmp_path, quantization
):
    cfg = _lm_config(wide_llama, corpus_txt, steps=2)
    cfg["model"]["quantization"] = quantization
    s = train(cfg, tmp_path / "q")
    assert s["status"] == "complete" and s["base_dtype"] == quantization and s["quantization"] == quantization
    run = runs.load_run(tmp_path / "q")
    assert quantization in run.meta["quantized_note"]
    assert float(run.adapters["model.layers.0.self_attn.q_proj"].B.abs().max()) > 0
    # The fingerprint is the checkpoint's W, so the W-side analyses accept the run's base.
    from lorascope import base_model

    (name, W), *_ = base_model.iter_base_weights(run, ["model.layers.0.self_attn.q_proj"])
    assert W.shape == (128, 128)


@needs_bnb
@pytest.mark.parametrize("quantization, tol", [("nf4", 0.15), ("int8", 0.02)])
def test_quantized_layer_dequantizes_close_to_w(wide_llama, quantization, tol):
    from lorascope.lora import LoRALinear

    ref = models.load_model(str(wide_llama), models.CAUSAL_LM).model.layers[0].self_attn.q_proj.weight
    q = models.load_model(str(wide_llama), models.CAUSAL_LM, None, "fp32", quantization, "cpu")
    layer = LoRALinear(q.model.layers[0].self_attn.q_proj, 2, 4.0)
    assert (layer.in_features, layer.out_features) == (128, 128)
    W = layer.base_weight()
    assert W.shape == (128, 128)
    assert float((W - ref).norm() / ref.norm()) < tol  # the quantization error of a random Gaussian W
    with pytest.raises(LorascopeError, match="quantized"):
        layer.merge()


# ----------------------------------------------------------------------------- several processes


def _factors(run_dir):
    run = runs.load_run(run_dir)
    return {m: (a.A, a.B) for m, a in run.adapters.items()}


def _max_diff(x, y):
    return max(float((x[m][i] - y[m][i]).abs().max()) for m in x for i in (0, 1))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_what_one_does(dropless_bert, topic_jsonl, tmp_path, strategy, caplog):
    caplog.set_level(logging.INFO)
    one = launch(tiny_config(dropless_bert, topic_jsonl, steps=4, train={"log_every": 1}), tmp_path / "one")
    cfg = tiny_config(dropless_bert, topic_jsonl, steps=4, train={"log_every": 1, "devices": 2,
                      "strategy": strategy})  # fmt: skip
    two = launch(cfg, tmp_path / "two")
    assert one["status"] == two["status"] == "complete", two.get("reason")
    assert two["processes"] == 2 and two["strategy"] == strategy
    assert _max_diff(_factors(tmp_path / "one"), _factors(tmp_path / "two")) < 1e-5
    steps = [r["step"] for r in run_format.read_metrics(tmp_path / "two").to_dict("records")]
    assert steps == [0, 1, 2, 3, 4]  # written once, by rank 0
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "two"), abs=1e-6)
    # rank 0 trains in a process of its own; its log records reach the job's handlers
    assert sum("trainable parameters" in r.getMessage() for r in caplog.records) == 2


def test_a_killed_rank_fails_the_run_and_a_relaunch_redoes_it(
    dropless_bert, topic_jsonl, tmp_path, monkeypatch
):
    cfg = tiny_config(dropless_bert, topic_jsonl, steps=4, train={"devices": 2})
    monkeypatch.setenv("LORASCOPE_TEST_KILL", "1:2")  # rank 1 dies (SIGKILL) at step 2
    s = launch(cfg, tmp_path / "r")
    assert s["status"] == "failed" and "rank 1 of 2 was killed by signal 9" in s["reason"]
    assert run_format.read_summary(tmp_path / "r")["status"] == "failed"
    assert not runs.is_complete(tmp_path / "r")
    monkeypatch.delenv("LORASCOPE_TEST_KILL")
    assert launch(cfg, tmp_path / "r")["status"] == "complete"


def test_a_rank_that_dies_before_joining_does_not_hang_the_others(
    dropless_bert, topic_jsonl, tmp_path, monkeypatch
):
    # Rank 0 then waits in the process group's rendezvous, which gloo gives 30 minutes: the job must
    # see the dead rank itself, stop the others and record the run as failed.
    cfg = tiny_config(dropless_bert, topic_jsonl, steps=4, train={"devices": 2})
    monkeypatch.setenv("LORASCOPE_TEST_KILL", "1:start")
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(launch(cfg, tmp_path / "r")), daemon=True)
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "the job still waits for a rank that died"
    assert done["status"] == "failed" and "rank 1 of 2 was killed by signal 9" in done["reason"]
    assert not runs.is_complete(tmp_path / "r")


def test_a_failure_every_rank_takes_keeps_its_reason(dropless_bert, topic_jsonl, tmp_path):
    cfg = tiny_config(dropless_bert, topic_jsonl, steps=4, train={"devices": 2, "fail_at_step": 2})
    s = launch(cfg, tmp_path / "r")
    assert s["status"] == "failed" and "failed at step 2 as train.fail_at_step asked" in s["reason"]


def test_torchrun_trains_one_run_over_two_processes(dropless_bert, topic_jsonl, tmp_path):
    ref = launch(tiny_config(dropless_bert, topic_jsonl, steps=4), tmp_path / "ref")
    assert ref["status"] == "complete"
    overrides = [
        "model=hf", f"model.name_or_path={dropless_bert}", "model.name=tiny", "task=text",
        f"task.path={topic_jsonl}", "task.label_field=label", "task.name=topics", "task.val_fraction=0.2",
        "train.steps=4",
        "train.batch_size=8", "train.seq_len=16", "train.threads=1", f"runs_dir={tmp_path / 'runs'}",
        "rank=2",
    ]  # fmt: skip
    from lorascope.distributed import free_port

    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*torchrun, *sweep_cmd(*overrides)[1:]], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny-topics" / "r2-s0"
    assert run_format.read_summary(run_dir)["processes"] == 2
    assert _max_diff(_factors(tmp_path / "ref"), _factors(run_dir)) < 1e-5
    assert (p.stdout + p.stderr).count("sweep done") == 1  # rank 0 alone reports the sweep


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override, line",
    [
        ("model.dtype=bogus", "model.dtype=bogus must be one of auto, bf16, fp16, fp32"),
        ("train.devices=64 train.batch_size=64", "train.devices=64 but this machine has"),
        ("train.strategy=fsdp", "train.strategy=fsdp shards the base over several processes"),
        ("train.batch_size=7 train.devices=2", "must be a multiple of train.devices=2"),
        ("method=full model.quantization=nf4", "cannot be used with method=full"),
    ],
)
def test_bad_scale_settings_are_one_line_before_any_model_loads(
    tiny_bert, topic_jsonl, tmp_path, override, line
):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [*tiny_overrides(tiny_bert, topic_jsonl, tmp_path / "runs"), *override.split()]
    p = subprocess.run(sweep_cmd(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    errors = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and line in errors[0], p.stderr
    assert not (tmp_path / "runs" / "tiny-topics" / "r8-s0").exists()


def test_quantization_without_bitsandbytes_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(LorascopeError, match=r"model.quantization=nf4 needs bitsandbytes: pip install"):
        from_dict({"model": {"quantization": "nf4"}})
