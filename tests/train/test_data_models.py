"""Embedded data sets, tokenized batches, and base weights for the analysis (lorascope.base_model)."""

from __future__ import annotations

import pytest
import torch

from lorascope import base_model, data, models
from lorascope.errors import LorascopeError
from lorascope.run_format import Run, base_fingerprint


def test_bbc_has_5_classes_2225_docs_and_a_fixed_split():
    texts, labels, classes = data.bbc_documents()
    assert classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(texts) == 2225 and sorted(set(labels)) == [0, 1, 2, 3, 4]
    assert [labels.count(c) for c in range(5)] == [510, 386, 417, 511, 401]
    train, val = data.split_indices(len(texts), 0.2, seed=0)
    assert (train, val) == data.split_indices(len(texts), 0.2, seed=0)
    assert len(val) == 445 and not set(train) & set(val) and len(train) + len(val) == 2225
    assert len({labels[i] for i in val[:50]}) == 5  # a capped validation set still has every class
    assert data.split_indices(len(texts), 0.2, seed=1)[1] != val


def test_shakespeare_is_plain_text():
    text = data.shakespeare_text()
    assert len(text) > 1_000_000
    for mark in ("*", "_", "\\", "\n#", "  \n"):
        assert mark not in text, mark
    assert "Exit Servant\n\nIs this a dagger which I see before me," in text
    assert "LYSANDER\n[Awaking]\nAnd run through fire" in text  # unbalanced markup in the source


def test_strip_markdown_small_case():
    md = "# Play\n\n## ACT I\n\n_Enter HAMLET_\n\n**HAMLET**  \nTo be, or not to be:  \n_\\[Aside]_ ay.\n"
    assert (
        data.strip_markdown(md)
        == "Play\n\nACT I\n\nEnter HAMLET\n\nHAMLET\nTo be, or not to be:\n[Aside] ay."
    )


def test_classification_batches_pad_and_mask(tiny_bert, topic_jsonl):
    tok = models.load_tokenizer(str(tiny_bert))
    task = {"name": "t", "source": "text", "path": str(topic_jsonl), "label_field": "label"}
    d = data.build_task(task, tok, seq_len=8)
    assert d.kind == "classification" and d.classes == ["arts", "money", "sport"]
    assert len(d.train_ids) == 96 and len(d.val_ids) == 24
    b = next(d.train_batches(4, seed=0))
    assert b["input_ids"].shape == b["attention_mask"].shape and b["input_ids"].shape[0] == 4
    assert b["input_ids"].shape[1] <= 8 and b["labels"].shape == (4,)
    assert torch.equal(b["input_ids"], next(d.train_batches(4, seed=0))["input_ids"])


def test_lm_blocks_and_evaluation(tiny_llama, corpus_txt):
    tok = models.load_tokenizer(str(tiny_llama))
    d = data.build_task({"name": "c", "source": "text", "path": str(corpus_txt), "kind": "lm"}, tok, 16)
    b = next(d.train_batches(2, seed=0))
    assert b["input_ids"].shape == (2, 16) and torch.equal(b["labels"], b["input_ids"])
    model = models.load_model(str(tiny_llama), models.CAUSAL_LM)
    m = data.evaluate(model, d, batch_size=8, device="cpu")
    assert m["val_perplexity"] == pytest.approx(torch.tensor(m["val_loss"]).exp().item())


def test_text_task_errors_are_clear(tmp_path):
    with pytest.raises(LorascopeError, match="no such file"):
        data.read_text_file(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"body": "b"}\n')
    with pytest.raises(LorascopeError, match="bad.jsonl:2"):
        data.read_text_file(str(bad), label_field="label")


def _run(tmp_path, base, **meta):
    return Run(path=tmp_path, adapters={}, meta={"base_model": str(base), **meta})


def test_base_weights_match_names_and_check_fingerprint(tiny_bert, tmp_path):
    from transformers import BertForSequenceClassification

    ref = BertForSequenceClassification.from_pretrained(tiny_bert)
    name = "bert.encoder.layer.1.attention.self.value"
    W_ref = ref.get_submodule(name).weight
    meta = {
        "model_class": models.SEQ_CLS,
        "num_labels": 3,
        "base_fingerprint": {name: base_fingerprint(W_ref)},
    }
    got = base_model.base_weights(
        _run(tmp_path, tiny_bert, **meta), [name, "encoder.layer.0.attention.self.query"]
    )
    assert torch.equal(got[name], W_ref) and got[name].dtype == torch.float32
    assert got["encoder.layer.0.attention.self.query"].shape == (32, 32)  # matched by suffix
    # A PEFT folder's meta: base_model_name_or_path and task_type only.
    peft = base_model.base_weights(_run(tmp_path, tiny_bert, task_type="SEQ_CLS"), [name])
    assert torch.equal(peft[name], W_ref)
    meta["base_fingerprint"][name] *= 1.001
    with pytest.raises(LorascopeError, match=name):
        base_model.base_weights(_run(tmp_path, tiny_bert, **meta), [name])
    with pytest.raises(LorascopeError, match="ambiguous"):
        base_model.base_weights(_run(tmp_path, tiny_bert, **meta), ["query"])
    with pytest.raises(LorascopeError, match="offline"):
        base_model.base_weights(_run(tmp_path, tmp_path / "gone"), [name])


def test_conv1d_weight_is_read_transposed(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32)
    ).save_pretrained(tmp_path / "gpt2")
    got = base_model.base_weights(
        _run(tmp_path, tmp_path / "gpt2", task_type="CAUSAL_LM"), ["h.0.attn.c_attn"]
    )
    ref = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").transformer.h[0].attn.c_attn.weight  # (in, out)
    assert torch.equal(got["h.0.attn.c_attn"], ref.T) and got["h.0.attn.c_attn"].shape == (48, 16)
