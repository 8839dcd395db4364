"""Shared fixtures: tiny random models saved with save_pretrained (BERT and Llama, each with a
word-level tokenizer), and small text data sets, all under pytest's tmp folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """The lorascope cache (W's spectra, the dequantized SmolLM2) in a folder of this test session:
    tests that count cache hits see only their own entries, and a user's cache is never touched."""
    folder = tmp_path_factory.mktemp("lorascope-cache")
    old = os.environ.get("LORASCOPE_CACHE")
    os.environ["LORASCOPE_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("LORASCOPE_CACHE", None)
    else:
        os.environ["LORASCOPE_CACHE"] = old


ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the a of and to in market shares bank profit goal match team player film music star award "
    "election minister party vote phone software computer internet game win lose price growth"
).split()
TOPICS = {
    "money": "market shares bank profit price growth".split(),
    "sport": "goal match team player win lose".split(),
    "arts": "film music star award game".split(),
}


def _tokenizer(path: Path, bos_eos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = dict(pad_token="[PAD]", unk_token="[UNK]")
    if bos_eos:
        kw.update(bos_token="[CLS]", eos_token="[SEP]")
    else:
        kw.update(cls_token="[CLS]", sep_token="[SEP]")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(path)
    return len(vocab)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    for small matrices on a shared 2-core CPU, OpenMP threads cost more than they give."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer random BERT (hidden 32) with a sequence-classification config, saved to a folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = _tokenizer(path, bos_eos=False)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=3,
    )  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 32, GQA 4 -> 2 heads) saved to a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    vocab = _tokenizer(path, bos_eos=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def topic_jsonl(tmp_path_factory) -> Path:
    """120 short labelled texts in 3 topics: {"text": ..., "label": ...} per line."""
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "topics.jsonl"
    lines = []
    for i in range(120):
        label = list(TOPICS)[i % 3]
        words = [rng.choice(TOPICS[label]) if rng.random() < 0.6 else rng.choice(WORDS) for _ in range(12)]
        lines.append(json.dumps({"text": " ".join(words), "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_txt(tmp_path_factory) -> Path:
    """A plain-text corpus with an easy pattern, for causal-LM runs."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(" ".join(["the team win the match and the bank profit growth"] * 200))
    return path


def tiny_config(model: Path, data: Path, steps: int = 6, **sections) -> dict:
    """A `train()` config of a tiny classifier on the topic data: rank 2, `steps` steps of 8 × 16 tokens.

    `train=` adds train keys; any other keyword is a top-level key (method=, lora=, full=, seed=, ...)."""
    train = {"steps": steps, "batch_size": 8, "seq_len": 16, "threads": 1, **sections.pop("train", {})}
    return {
        "rank": 2,
        "model": {"name": "tiny", "name_or_path": str(model), "targets": ["query", "value"]},
        "task": {"name": "topics", "source": "text", "kind": "classification", "path": str(data),
                 "label_field": "label"},
        "train": train,
        **sections,
    }  # fmt: skip


def sweep_cmd(*overrides: str) -> list[str]:
    import sys

    return [sys.executable, str(ROOT / "sweep.py"), *overrides]


def tiny_overrides(model: Path, data: Path, runs_dir: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long sweep of the tiny BERT on the topic data."""
    return [
        "model=hf", f"model.name_or_path={model}", "model.name=tiny",
        "task=text", f"task.path={data}", "task.label_field=label",
        "task.name=topics", "train.steps=4", "train.batch_size=8", "train.seq_len=16",
        "train.threads=1", f"runs_dir={runs_dir}", *extra,
    ]  # fmt: skip
