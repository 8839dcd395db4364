"""The step-0 evaluation is computed once per distinct starting network of a sweep: LoRA at ΔW = 0 is
its base bit for bit, so the ranks of one seed and full fine-tuning share it, and nothing else does."""

from __future__ import annotations

import json

import torch
from conftest import tiny_config
from transformers import AutoModelForSequenceClassification

from lorascope import data as data_mod
from lorascope import initial_eval, run_format
from lorascope.data import TaskData
from lorascope.lora import add_lora
from lorascope.train import train


def _model(path):
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()


def _task():
    return TaskData("classification", [[2, 5, 7, 9], [3, 4, 6]], [[2, 8, 8], [5, 6, 7, 4]], [0, 1], [1, 2])


def test_a_zero_lora_update_is_its_base_bit_for_bit_and_keys_as_it(tiny_bert):
    task, settings = _task(), {"batch_size": 2}
    plain = _model(tiny_bert)
    x = torch.tensor([[2, 5, 7, 9, 3]])
    y0 = plain(input_ids=x).logits
    k0 = initial_eval.key(plain, task, settings)
    for rank in (1, 4):
        wrapped = _model(tiny_bert)
        add_lora(wrapped, ["query", "value"], rank, 16, trainable=["classifier"], seed=rank)
        assert torch.equal(wrapped(input_ids=x).logits, y0)  # the premise of the cache, bit for bit
        assert initial_eval.key(wrapped, task, settings) == k0
    moved = _model(tiny_bert)
    layers = add_lora(moved, ["query", "value"], 2, 16, seed=0)
    with torch.no_grad():
        next(iter(layers.values())).B[0, 0] = 1e-3  # ΔW ≠ 0: a different network
    assert initial_eval.key(moved, task, settings) != k0
    dora = _model(tiny_bert)
    add_lora(dora, ["query", "value"], 2, 16, seed=0, dora=True)  # m/‖W‖ rounds: not the base exactly
    assert initial_eval.key(dora, task, settings) != k0
    head = _model(tiny_bert)
    with torch.no_grad():
        head.classifier.bias[0] += 1e-6  # another head
    assert initial_eval.key(head, task, settings) != k0
    assert initial_eval.key(plain, task, {"batch_size": 1}) != k0
    other = _task()
    other.val_labels = [1, 0]
    assert initial_eval.key(plain, other, settings) != k0


def _count_evaluations(monkeypatch):
    calls = []
    real = data_mod.evaluate

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(data_mod, "evaluate", counted)
    return calls


def _step0(out):
    return json.loads((out / run_format.METRICS_FILE).read_text().splitlines()[0])


def test_the_runs_of_one_seed_evaluate_step_0_once(tiny_bert, topic_jsonl, tmp_path, monkeypatch):
    reference = tmp_path / "alone" / "r2-s0"
    train(tiny_config(tiny_bert, topic_jsonl, steps=2), reference)
    calls = _count_evaluations(monkeypatch)
    sweep = tmp_path / "sweep"
    train(tiny_config(tiny_bert, topic_jsonl, steps=2), sweep / "r2-s0")
    assert len(calls) == 2  # step 0 and the last step
    train(tiny_config(tiny_bert, topic_jsonl, steps=2, rank=4), sweep / "r4-s0")
    train(tiny_config(tiny_bert, topic_jsonl, steps=2, method="full"), sweep / "full-s0")
    assert len(calls) == 4  # the last steps only: their step 0 is r2-s0's
    for run in ("r4-s0", "full-s0"):
        assert _step0(sweep / run) == _step0(reference)  # the numbers an uncached run computes
    # The tiny checkpoint holds its own 3-label head, so seed 1 starts as the same network: shared too.
    train(tiny_config(tiny_bert, topic_jsonl, steps=2, seed=1), sweep / "r2-s1")
    assert len(calls) == 5 and _step0(sweep / "r2-s1") == _step0(reference)
    # PiSSA moves s·B0 A0 out of W: the same function in exact arithmetic, not in floating point.
    train(tiny_config(tiny_bert, topic_jsonl, steps=2, lora={"init": "pissa"}), sweep / "r2-s0-pissa")
    assert len(calls) == 7
    assert len(list((sweep / initial_eval.FOLDER).glob("*.json"))) == 2


def test_an_unreadable_entry_is_evaluated_again(tiny_bert, topic_jsonl, tmp_path, monkeypatch):
    train(tiny_config(tiny_bert, topic_jsonl, steps=1), tmp_path / "r2-s0")
    (entry,) = (tmp_path / initial_eval.FOLDER).glob("*.json")
    good = _step0(tmp_path / "r2-s0")
    entry.write_text('{"run": "r2-s0", "metr')  # a torn write from some other tool
    calls = _count_evaluations(monkeypatch)
    train(tiny_config(tiny_bert, topic_jsonl, steps=1, rank=4), tmp_path / "r4-s0")
    assert len(calls) == 2 and _step0(tmp_path / "r4-s0") == good
    assert json.loads(entry.read_text())["run"] == "r4-s0"  # rewritten whole
