"""task=hf: data sets through Hugging Face `datasets`, offline — sentence pairs, instruction data with the
loss on the response only, data files, the datasets cache, and one line for every bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest
import torch
from conftest import ROOT, TOPICS, WORDS, sweep_cmd

from lorascope import config, data, hf_data, hf_task, instruct, models, run_format, runs
from lorascope.errors import LorascopeError

pytestmark = pytest.mark.usefixtures("one_thread", "datasets_cache")
LABELS = ["entailment", "neutral", "contradiction"]
PAIR = {"text_field": "premise", "text_pair_field": "hypothesis", "label_field": "label"}  # MNLI's fields
TEMPLATE = (  # a chat template in the tiny tokenizer's words: each turn ends with [SEP]
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """The datasets cache (where data files are converted to Arrow) in a folder of this module's own."""
    import datasets

    folder = tmp_path_factory.mktemp("hf-datasets-cache")
    old_env, old = os.environ.get("HF_DATASETS_CACHE"), datasets.config.HF_DATASETS_CACHE
    os.environ["HF_DATASETS_CACHE"] = str(folder)
    datasets.config.HF_DATASETS_CACHE = folder
    yield folder
    datasets.config.HF_DATASETS_CACHE = old
    if old_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = old_env


def _words(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _pairs(n: int, seed: int, label=None) -> dict:
    """premise / hypothesis / label rows: the label says whether the hypothesis shares the premise's topic."""
    rng = random.Random(seed)
    rows = {"premise": [], "hypothesis": [], "label": []}
    topics = list(TOPICS)
    for i in range(n):
        y = i % 3
        a = topics[i % 3]
        b = a if y == 0 else topics[(i + y) % 3]
        rows["premise"].append(" ".join(rng.choice(TOPICS[a]) for _ in range(8)))
        rows["hypothesis"].append(" ".join(rng.choice(TOPICS[b]) for _ in range(4)))
        rows["label"].append(y if label is None else label)
    return rows


@pytest.fixture(scope="module")
def pairs_disk(tmp_path_factory):
    """An MNLI-shaped DatasetDict saved with save_to_disk: train, validation_matched, test (labels -1)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    text = Value("string")
    feats = Features({"premise": text, "hypothesis": text, "label": ClassLabel(names=LABELS)})
    path = tmp_path_factory.mktemp("pairs") / "mnli"
    splits = {"train": _pairs(60, 0), "validation_matched": _pairs(12, 1), "test": _pairs(6, 2, label=-1)}
    splits["test"]["label"][:2] = [1, 2]  # two labelled rows among the unlabelled
    DatasetDict({k: Dataset.from_dict(v, features=feats) for k, v in splits.items()}).save_to_disk(path)
    return path


def _instructions(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    prompts = [_words(rng, 3 + i % 5) for i in range(n)]
    return {"prompt": prompts, "response": [_words(rng, 2 + i % 4) for i in range(n)]}


@pytest.fixture(scope="module")
def instruct_disk(tmp_path_factory):
    """A prompt / response Dataset (one split) saved with save_to_disk."""
    from datasets import Dataset

    path = tmp_path_factory.mktemp("instruct") / "code"
    Dataset.from_dict(_instructions(40, 0)).save_to_disk(path)
    return path


def _task(dataset, **fields) -> dict:
    """A task dict as TaskConfig gives it, with task=hf's defaults."""
    cfg = config.from_dict({"task": {"source": "hf", "dataset": str(dataset), **fields}})
    return config.to_dict(cfg)["task"]


def _tok(path):
    return models.load_tokenizer(str(path))


def test_the_preset_composes_and_names_the_sweep_after_the_data_set():
    from hydra import compose, initialize_config_dir

    from lorascope import hydra_glue

    hydra_glue.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=hf", "task.dataset=nyu-mll/glue", "task.subset=mnli", *[
            f"task.{k}={v}" for k, v in PAIR.items()]])  # fmt: skip
    plain = config.from_dict(hydra_glue.plain_config(cfg))
    assert plain.name == "minilm-glue-mnli" and plain.task.source == "hf" and plain.task.val_split is None
    assert config.dataset_name("/data/code.jsonl") == "code" and config.dataset_name("/d/x/*.parquet") == "x"


def test_sentence_pairs_are_tokenized_together_and_named_by_their_classlabel(pairs_disk):
    from datasets import load_from_disk

    tok = _tok("minilm")  # a real BERT tokenizer: [CLS] a [SEP] b [SEP]
    task = _task(pairs_disk, **PAIR)
    d = data.build_task(task, tok, seq_len=32)
    rows = load_from_disk(pairs_disk)
    assert d.kind == "classification" and d.classes == LABELS
    # validation_matched is the validation split; the training split keeps its stored order.
    assert len(d.train_ids) == 60 and len(d.val_ids) == 12
    assert d.train_labels == rows["train"]["label"] and d.val_labels == rows["validation_matched"]["label"]
    for i in (0, 7):
        pair = tok(rows["train"][i]["premise"], rows["train"][i]["hypothesis"])["input_ids"]
        assert d.train_ids[i] == pair and pair.count(tok.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]
    # GLUE's test splits hold -1 for "no label": those rows are left out.
    test = data.build_task({**task, "val_split": "test"}, tok, seq_len=32)
    assert test.val_labels == [1, 2]
    # val_split equal to split holds val_fraction of it out, by split_seed.
    held_out = {**task, "val_split": "train", "val_fraction": 0.25}
    held = data.build_task(held_out, tok, seq_len=32)
    assert (len(held.train_ids), len(held.val_ids)) == (45, 15)
    assert held.val_ids == data.build_task(held_out, tok, seq_len=32).val_ids


def _plain_labels(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """What the loss should see without a chat template, from the tokenizer directly."""
    p = tok(prompt)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + r, [-100] * len(p) + r


def test_instruction_loss_is_on_the_response_tokens_only(tiny_llama, instruct_disk):
    from datasets import load_from_disk

    tok = _tok(tiny_llama)
    task = _task(instruct_disk, prompt_field="prompt", response_field="response", val_fraction=0.25)
    d = data.build_task(task, tok, seq_len=32)
    assert d.kind == "instruction" and (len(d.train_ids), len(d.val_ids)) == (30, 10)
    rows = load_from_disk(instruct_disk)
    _, va = data.split_indices(40, 0.25, 0)
    for k, i in enumerate(va):
        assert (d.val_ids[k], d.val_labels[k]) == _plain_labels(tok, rows[i]["prompt"], rows[i]["response"])
    batch = next(d.val_batches(4))
    want = sum(len(tok(rows[i]["response"], add_special_tokens=False)["input_ids"]) + 1 for i in va[:4])
    assert int((batch["labels"] != -100).sum()) == want  # response tokens and their EOS, nothing else
    assert bool((batch["labels"][batch["attention_mask"] == 0] == -100).all())  # padding carries no loss
    assert batch["input_ids"].shape == batch["labels"].shape
    # evaluate's loss: the mean cross-entropy over exactly those tokens, over the whole validation set.
    model = models.load_model(str(tiny_llama), models.CAUSAL_LM)
    got = data.evaluate(model, d, batch_size=3, device="cpu")
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(d.val_ids, d.val_labels, strict=True):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            keep = target != -100
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    assert got["val_loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["val_perplexity"] == pytest.approx(torch.tensor(total / count).exp().item(), rel=1e-5)
    # train_batches stays a function of (seed, batch index): a resumed stream is the same stream.
    stream = d.train_batches(4, seed=0)
    fifth = [next(stream) for _ in range(5)][4]
    assert torch.equal(fifth["labels"], next(d.train_batches(4, seed=0, start=4))["labels"])


def test_the_chat_template_marks_the_assistant_turn(tiny_llama, tmp_path):
    tok = _tok(tiny_llama)
    tok.chat_template = TEMPLATE
    prompts, responses = ["the bank profit", "goal match"], ["market shares", "win"]
    ids, labels, kept = instruct.encode(tok, prompts, responses, seq_len=64)
    assert kept == [0, 1]
    for k in kept:
        head = tok(f"user {prompts[k]} [SEP] assistant ", add_special_tokens=False)["input_ids"]
        tail = tok(responses[k], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # ... [SEP]
        assert ids[k] == head + tail and labels[k] == [-100] * len(head) + tail
    plain, _, _ = instruct.encode(tok, prompts, responses, seq_len=64, chat_template=False)
    assert plain[0] == _plain_labels(tok, prompts[0], responses[0])[0]
    # A prompt that fills seq_len leaves no response token: that example is left out, not trained on.
    _, short, kept = instruct.encode(tok, prompts, responses, seq_len=6)  # heads of 6 and 5 tokens
    assert kept == [1] and short[0] == labels[1][:6] and short[0][-1] != -100
    tok.chat_template = None
    with pytest.raises(LorascopeError, match="has no chat template; use task.chat_template=false"):
        instruct.encode(tok, prompts, responses, seq_len=64, chat_template=True)


def test_data_files_and_folders_of_them(tiny_bert, tmp_path):
    tok = _tok(tiny_bert)
    rows = _pairs(40, 3)
    rows["label"] = [LABELS[y] for y in rows["label"]]  # string labels: classes sorted
    jsonl = tmp_path / "pairs.jsonl"
    records = [dict(zip(rows, r, strict=True)) for r in zip(*rows.values(), strict=True)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    from datasets import Dataset

    Dataset.from_dict(rows).to_parquet(tmp_path / "pairs.parquet")
    fields = {**PAIR, "val_fraction": 0.1}
    got = {}
    for name in ("pairs.jsonl", "pairs.parquet", "pairs.*"):
        if name == "pairs.*":  # a glob of two formats is refused
            with pytest.raises(LorascopeError, match="one format"):
                hf_data.check(_task(tmp_path / name, **fields))
            continue
        d = data.build_task(_task(tmp_path / name, **fields), tok, seq_len=32)
        assert d.classes == sorted(LABELS) and (len(d.train_ids), len(d.val_ids)) == (36, 4)
        got[name] = (d.train_ids, d.train_labels, d.val_ids)
    assert got["pairs.jsonl"] == got["pairs.parquet"]
    # A folder of data files: its splits come from the file names.
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(jsonl, folder / "train.jsonl")
    (folder / "validation.jsonl").write_text("".join(jsonl.read_text().splitlines(True)[:5]))
    d = data.build_task(_task(folder, **fields), tok, seq_len=32)
    assert (len(d.train_ids), len(d.val_ids)) == (40, 5)


def _cache_hub_dataset(cache, repo_id: str, subset: str, splits: dict) -> None:
    """Write `splits` into the datasets cache the way `load_dataset(repo_id, subset)` leaves a Hub data
    set there (<cache>/<org>___<name>/<subset>/0.0.0/<hash>/), without the Hub."""
    from datasets import Dataset
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

    org, name = repo_id.split("/")
    files = {}
    for split, rows in splits.items():
        files[split] = [str(cache / f"src-{split}.parquet")]
        Dataset.from_dict(rows).to_parquet(files[split][0])

    class Hub(Parquet):
        BUILDER_CONFIGS = [ParquetConfig(name=subset, data_files=DataFilesDict.from_local_or_remote(files))]

    Hub(dataset_name=name, config_name=subset, hash="0123abcd", cache_dir=str(cache)).download_and_prepare()
    (cache / f"{org}___{name}").mkdir(exist_ok=True)
    (cache / name / subset).rename(cache / f"{org}___{name}" / subset)


def test_a_dataset_id_is_read_from_the_datasets_cache_offline(tiny_bert, datasets_cache):
    splits = {"train": _pairs(30, 4), "validation_matched": _pairs(9, 5)}
    _cache_hub_dataset(datasets_cache, "tiny-org/glue", "mnli", splits)
    task = _task("tiny-org/glue", subset="mnli", **PAIR)
    d = data.build_task(task, _tok(tiny_bert), seq_len=32)
    assert (len(d.train_ids), len(d.val_ids)) == (30, 9) and d.classes == ["0", "1", "2"]
    with pytest.raises(LorascopeError, match=r"^task.dataset=tiny-org/glue cannot be read: .*'rte'.*mnli"):
        hf_data.check({**task, "subset": "rte"})


def test_a_dataset_id_is_read_from_its_files_in_the_hub_cache(tiny_llama, tmp_path, monkeypatch):
    import huggingface_hub

    # What `hf download --repo-type dataset tiny-org/code` leaves: refs/main and the snapshot's files.
    repo, commit = tmp_path / "hub" / "datasets--tiny-org--code", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    files = repo / "snapshots" / commit / "data"
    files.mkdir(parents=True)
    rows = _instructions(12, 1)
    for split, part in (("train", slice(0, 8)), ("validation", slice(8, 12))):
        lines = [
            json.dumps({"prompt": p, "response": r})
            for p, r in zip(rows["prompt"][part], rows["response"][part], strict=True)
        ]
        (files / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    task = _task("tiny-org/code", prompt_field="prompt", response_field="response")
    hf_data.check(task)
    tok = _tok(tiny_llama)
    d = data.build_task(task, tok, seq_len=32)
    assert (len(d.train_ids), len(d.val_ids)) == (8, 4)
    assert d.val_labels[0] == _plain_labels(tok, rows["prompt"][8], rows["response"][8])[1]
    with pytest.raises(LorascopeError, match="task.response_field=answer is not a column"):
        hf_data.check({**task, "response_field": "answer"})


def test_causal_lm_on_a_text_field_blocks_each_split(tiny_llama, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = random.Random(0)
    texts = {split: [_words(rng, 20) for _ in range(n)] for split, n in (("train", 12), ("validation", 4))}
    for split, lines in texts.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in lines))
    tok = _tok(tiny_llama)
    d = data.build_task(_task(folder, text_field="body"), tok, seq_len=16)
    assert d.kind == "lm" and d.train_ids.shape[1] == 16 and d.val_ids.shape[1] == 16
    for side, blocks in (("train", d.train_ids), ("validation", d.val_ids)):
        stream = [
            t
            for text in texts[side]
            for t in tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ]
        assert blocks.flatten().tolist() == stream[: blocks.numel()] and len(stream) - blocks.numel() < 16


NOT_A_COLUMN = " is not a column of {ds} (train): its columns are {cols}"
NOT_A_SPLIT = " is not a split of {ds}: its splits are {splits}"


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"label_field": "lable"}, "task.label_field=lable" + NOT_A_COLUMN),
        ({"text_pair_field": "hypo"}, "task.text_pair_field=hypo" + NOT_A_COLUMN),
        ({"split": "training"}, "task.split=training" + NOT_A_SPLIT),
        ({"val_split": "validation"}, "task.val_split=validation" + NOT_A_SPLIT),
        ({"kind": "lm"}, "task.kind=lm does not fit the fields given (they make a classification task)"),
        ({"subset": "mnli"}, "task.subset=mnli: a save_to_disk folder has no subsets; unset it"),
    ],
)  # fmt: skip
def test_bad_fields_and_splits_are_one_line(pairs_disk, fields, needle):
    with pytest.raises(LorascopeError) as e:
        hf_data.check(_task(pairs_disk, **{**PAIR, **fields}))
    cols, splits = "premise, hypothesis, label", "train, validation_matched, test"
    assert str(e.value).startswith(needle.format(ds=pairs_disk, cols=cols, splits=splits))
    assert "\n" not in str(e.value)


def test_uncached_ids_missing_files_and_bad_field_combinations_are_one_line(tmp_path):
    with pytest.raises(LorascopeError) as e:
        hf_data.check(_task("nobody/nothing", subset="mnli"))
    assert str(e.value).startswith("task.dataset=nobody/nothing is not in the local datasets cache")
    assert "datasets.load_dataset('nobody/nothing', 'mnli')" in str(e.value)
    with pytest.raises(LorascopeError, match="no such file"):
        hf_data.check(_task(tmp_path / "missing.jsonl"))
    with pytest.raises(LorascopeError, match="no such folder"):
        hf_data.check(_task(tmp_path / "missing" / "dir"))
    floats = tmp_path / "sts.jsonl"
    floats.write_text('{"text": "a", "score": 0.5}\n{"text": "b", "score": 4.0}\n')
    with pytest.raises(LorascopeError, match="holds float64 values"):
        hf_task.read(_task(floats, label_field="score"))
    for fields, needle in [
        ({"dataset": None}, "task.dataset=None must be given with task=hf"),
        ({"dataset": "x", "prompt_field": "q"}, "task.response_field=None must be given with task.prompt_"),
        ({"dataset": "x", "response_field": "a"}, "task.prompt_field=None must be given with task.response_"),
        ({"dataset": "x", "text_pair_field": "b"}, "task.text_pair_field=b needs task.label_field"),
        ({"source": "text", "prompt_field": "q", "response_field": "a"}, "task.source=text reads no prompt_"),
    ]:  # fmt: skip
        with pytest.raises(LorascopeError, match=f"^{needle}"):
            config.from_dict({"task": {"source": "hf", **fields}})


def test_a_sweep_trains_on_instruction_data_and_refuses_a_bad_field_before_any_model(
    tiny_llama, instruct_disk, tmp_path, datasets_cache
):
    common = [
        "model=hf", f"model.name_or_path={tiny_llama}", "model.name=tiny", "lora.targets=[q_proj,v_proj]",
        "task=hf", f"task.dataset={instruct_disk}", "task.prompt_field=prompt", "experiment=smoke",
        "train.threads=1", f"runs_dir={tmp_path}", "rank=2",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(datasets_cache)}
    run = lambda *extra: subprocess.run(  # noqa: E731
        sweep_cmd(*common, *extra), cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env,
    )  # fmt: skip
    bad = run("task.response_field=answer")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines() == [
        f"lorascope: error: task.response_field=answer is not a column of {instruct_disk} (train): "
        "its columns are prompt, response"
    ]
    assert not any(tmp_path.rglob("config.yaml"))  # no run was started
    ok = run("task.response_field=response")
    assert ok.returncode == 0, ok.stderr[-3000:]
    summary = run_format.read_summary(tmp_path / "smoke-tiny-code" / "r2-s0")
    assert summary["status"] == "complete" and summary["val_perplexity"] > 1
    cfg = run_format.read_config(tmp_path / "smoke-tiny-code" / "r2-s0")
    assert cfg["task"]["name"] == "code" and cfg["task"]["prompt_field"] == "prompt"


def test_pair_classification_trains_through_train(tiny_bert, pairs_disk, tmp_path):
    from lorascope.train import train

    task = {"name": "mnli", "source": "hf", "dataset": str(pairs_disk), "text_field": "premise",
            "text_pair_field": "hypothesis", "label_field": "label", "max_val": 6}  # fmt: skip
    cfg = {
        "rank": 2, "model": {"name": "tiny", "name_or_path": str(tiny_bert), "targets": ["query", "value"]},
        "task": task, "train": {"steps": 3, "batch_size": 8, "seq_len": 24, "threads": 1},
    }  # fmt: skip
    summary = train(cfg, tmp_path / "r2-s0")
    assert summary["status"] == "complete" and 0 <= summary["val_accuracy"] <= 1
    meta = runs.load_run(tmp_path / "r2-s0").meta
    assert meta["classes"] == LABELS and meta["num_labels"] == 3
