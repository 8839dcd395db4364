"""task=hf's examples: the columns of its training and validation sides, then their token ids.

    classification  text (and pair) tokenized together, truncated to seq_len; labels index the classes
    instruction     lorascope.instruct: prompt then response tokens, the loss on the response only
    lm              each side's texts one token stream, EOS after each text, cut into seq_len blocks

`read(task)` opens the data set through lorascope.hf_data (offline, checked) and returns the columns as
lists; `lorascope.data` holds part of the training side out where there is no validation split, and
`encode` gives TaskData's fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lorascope import hf_data, instruct
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)


@dataclass
class Columns:
    """Both sides of a task=hf data set as lists, by FIELDS key (text, pair, label, prompt, response)."""

    kind: str
    train: dict[str, list]
    val: dict[str, list] | None  # None: no validation split; hold some of train out
    classes: list[str]  # classification: labels index these


def take(columns: dict[str, list], index) -> dict[str, list]:
    return {k: [v[i] for i in index] for k, v in columns.items()}


def _side(dataset, task: dict, kind: str) -> dict[str, list]:
    fields = [(key, task[field]) for key, field in hf_data.FIELDS[kind] if task.get(field)]
    table = dataset.select_columns(list(dict.fromkeys(c for _, c in fields))).to_dict()
    return {key: table[c] if key == "label" else ["" if v is None else str(v) for v in table[c]]
            for key, c in fields}  # fmt: skip


def _labelled(side: dict[str, list], bad) -> tuple[dict[str, list], int]:
    keep = [i for i, y in enumerate(side["label"]) if not bad(y)]
    return take(side, keep), len(side["label"]) - len(keep)


def read(task: dict) -> Columns:
    """task.dataset's training and validation columns, checked; classification labels as class indices
    (a ClassLabel's own names as the classes; rows without a label, -1 in GLUE's test splits, left out)."""
    splits = hf_data.open_splits(task)
    kind, split = hf_data.task_kind(task), task.get("split", "train")
    val_name = hf_data.val_split(task, splits)
    log.info("%s: trains on split %s, validates on %s", task["dataset"], split,
             val_name or f"{task.get('val_fraction', 0.2):g} of it held out")  # fmt: skip
    train = _side(splits[split], task, kind)
    val = _side(splits[val_name], task, kind) if val_name else None
    classes: list[str] = []
    if kind == "classification":
        feature = splits[split].features[task["label_field"]]
        names = getattr(feature, "names", None)  # a ClassLabel
        sides = [s for s in (train, val) if s is not None]
        dropped = 0
        for i, side in enumerate(sides):
            sides[i], n = _labelled(side, lambda y: y is None or (names is not None and y < 0))
            dropped += n
        if dropped:
            log.info("%s: %d rows without a label left out", task["dataset"], dropped)
        if names is None:
            values = sorted({y for s in sides for y in s["label"]}, key=lambda y: (isinstance(y, str), y))
            names, index = [str(y) for y in values], {y: i for i, y in enumerate(values)}
            for side in sides:
                side["label"] = [index[y] for y in side["label"]]
        classes = list(names)
        train, val = sides[0], sides[1] if val is not None else None
    return Columns(kind, train, val, classes)


def _blocks(tokenizer, texts: list[str], seq_len: int):
    """(N, seq_len) blocks of the texts' tokens: one stream, EOS after each text, the tail dropped."""
    import torch  # here, not at the top: the sweep's compose-time check imports this module

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids + eos]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def encode(cols: Columns, tokenizer, seq_len: int, task: dict) -> dict:
    """TaskData's fields (kind, train_ids, val_ids, train_labels, val_labels, classes) from both sides;
    at most task.max_val validation examples or blocks."""
    out = {"kind": cols.kind, "classes": cols.classes}
    for side, c in (("train", cols.train), ("val", cols.val)):
        if cols.kind == "classification":
            pairs = c.get("pair")
            ids = tokenizer(c["text"], pairs, truncation=True, max_length=seq_len)["input_ids"]
            labels = c["label"]
        elif cols.kind == "instruction":
            ids, labels, kept = instruct.encode(tokenizer, c["prompt"], c["response"], seq_len,
                                                task.get("chat_template"))  # fmt: skip
            if len(kept) < len(c["prompt"]):
                log.info("%s (%s): %d examples whose prompt fills seq_len=%d left out", task["dataset"], side,
                         len(c["prompt"]) - len(kept), seq_len)  # fmt: skip
        else:
            ids, labels = _blocks(tokenizer, c["text"], seq_len), []
        if len(ids) == 0:
            why = {
                "classification": f"the {side} side holds no labelled example",
                "instruction": f"no {side} example keeps a response token within train.seq_len={seq_len}",
                "lm": f"the {side} texts make no block of train.seq_len={seq_len} tokens",
            }[cols.kind]
            raise LorascopeError(f"task.dataset={task['dataset']}: {why}")
        if side == "val" and task.get("max_val"):
            ids, labels = ids[: task["max_val"]], labels[: task["max_val"]]
        out[f"{side}_ids"], out[f"{side}_labels"] = ids, labels
    return out
