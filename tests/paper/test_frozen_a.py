"""Zhu et al.'s own test on synthetic sweeps: frozen-A runs (A at A0, only B learned) held apart from
trained-A runs of the same rank and seed, and the findings section read from planted metric gaps and
planted shared output directions."""

from __future__ import annotations

import shutil

import pytest
import torch
from factories import lora_run

from lorascope.compare.sweeps import sweep_table
from lorascope.errors import LorascopeError
from lorascope.paper.findings_asymmetry import frozen_a_section
from lorascope.paper.frozen_a import COMMAND, frozen_a, twin_seeds
from lorascope.paper.sweep import Sweep

pytestmark = pytest.mark.usefixtures("one_thread")

N, RANK = 48, 4
MODULES = [f"encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "value")]


def _direction(seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(N, generator=torch.Generator().manual_seed(seed)), dim=0)


def _factors(seed: int, u: torch.Tensor | None, frozen: bool, noise_seed: int):
    """A0 of the seed; A = A0 when frozen, else A0 plus a small step; B = 3·u ⊗ (1, 0, …) + noise:
    ΔW's top output direction is u (when u is given), whatever A is."""
    g0, g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(noise_seed)
    init, final = {}, {}
    for m in MODULES:
        A0 = torch.randn(RANK, N, generator=g0) / RANK**0.5
        A = A0 if frozen else A0 + 0.05 * torch.randn(RANK, N, generator=g)
        B = 0.1 * torch.randn(N, RANK, generator=g)
        if u is not None:
            B[:, 0] += 3 * u
        init[m], final[m] = (A0, torch.zeros(N, RANK)), (A, B)
    return init, final


def _sweep(tmp_path, accuracy: dict[int, tuple[float, float]], *, shared=True, name="frozen-toy"):
    """accuracy: seed -> (trained-A accuracy, frozen-A accuracy)."""
    root = tmp_path / name
    for seed, (acc_trained, acc_frozen) in accuracy.items():
        u = _direction(100 + seed)
        for frozen, acc in ((False, acc_trained), (True, acc_frozen)):
            init, final = _factors(seed, u if (shared or not frozen) else None, frozen, 10 * seed + frozen)
            lora_run(
                root, f"r{RANK}-s{seed}" + ("-frozenA" if frozen else ""), final, init=init, alpha=RANK,
                config={"rank": RANK, "seed": seed, "lora": {"train_A": not frozen}},
                summary={"status": "complete", "val_accuracy": acc, "val_loss": 1 - acc},
                meta={"seed": seed, "train_A": not frozen, "train_B": True},
            )  # fmt: skip
    return Sweep.load(root)


def _rows(text: str, start: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith(start)]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_frozen_a_runs_are_held_apart_from_trained_a_runs(tmp_path):
    sweep = _sweep(tmp_path, {0: (0.9, 0.9), 1: (0.8, 0.8)})
    assert sorted(sweep.runs) == [(RANK, 0), (RANK, 1)] and sorted(sweep.frozen_A) == [(RANK, 0), (RANK, 1)]
    assert not sweep.skipped  # same rank and seed, another variant: nothing overwritten or left out
    assert all(r.meta["train_A"] for r in sweep.runs.values())
    assert not any(r.meta["train_A"] for r in sweep.frozen_A.values())
    assert sweep.ranks == [RANK] and sweep.seeds(RANK) == [0, 1]  # what Figs. 3 and 4 read
    assert twin_seeds(sweep) == {RANK: [0, 1]}
    table = sweep_table(sweep.path)  # `lorascope ls` lists both, each twin beside its own
    assert list(table.index) == ["r4-s0", "r4-s0-frozenA", "r4-s1", "r4-s1-frozenA"]
    assert table.loc["r4-s1-frozenA", "val_accuracy"] == 0.8


def test_a_frozen_run_in_a_plain_folder_name_is_still_told_apart_by_its_header(tmp_path):
    sweep = _sweep(tmp_path, {0: (0.9, 0.9)})
    (sweep.path / "r4-s0-frozenA").rename(sweep.path / "custom")  # the header says train_A: false
    again = Sweep.load(sweep.path)
    assert list(again.frozen_A) == [(RANK, 0)] and again.frozen_A[(RANK, 0)].name == "custom"
    assert list(again.runs) == [(RANK, 0)] and again.runs[(RANK, 0)].name == "r4-s0"


def test_equal_metrics_hold_with_an_interval(tmp_path):
    sweep = _sweep(tmp_path, {0: (0.90, 0.90), 1: (0.85, 0.85), 2: (0.92, 0.92)})
    result = frozen_a(sweep, RANK, [0, 1, 2])
    assert result.gap.metric == "val_accuracy" and result.gap.gap.has_interval
    assert result.gap.gap.mean == pytest.approx(0.0) and result.gap.verdict == "holds"
    text = "\n".join(frozen_a_section(sweep))
    (row,) = _rows(text, f"| {RANK} | 0, 1, 2 |")
    assert row[5].startswith("0 [0, 0]") and row[-1] == "holds"
    assert "B alone matches training both (held-out metric within the tolerance): **holds**" in text


def test_a_much_worse_frozen_a_does_not_hold(tmp_path):
    sweep = _sweep(tmp_path, {0: (0.90, 0.70), 1: (0.88, 0.69), 2: (0.93, 0.72)})
    gap = frozen_a(sweep, RANK, [0, 1, 2]).gap
    assert gap.gap.mean == pytest.approx(-0.2, abs=0.01) and gap.gap.hi < -gap.tolerance
    assert gap.verdict == "does not hold"
    assert "tolerance): **does not hold**" in "\n".join(frozen_a_section(sweep))


def test_a_gap_within_seed_noise_of_the_tolerance_is_undecided(tmp_path):
    sweep = _sweep(tmp_path, {0: (0.90, 0.91), 1: (0.90, 0.87), 2: (0.90, 0.90)})
    gap = frozen_a(sweep, RANK, [0, 1, 2]).gap
    assert gap.gap.lo < -gap.tolerance < gap.gap.hi and gap.verdict == "undecided"


def test_one_seed_gives_no_interval_and_no_verdict(tmp_path):
    sweep = _sweep(tmp_path, {0: (0.9, 0.9)})
    text = "\n".join(frozen_a_section(sweep))
    assert "one seed: no interval" in text
    assert "**holds**" not in text and "**does not hold**" not in text


def test_b_learns_the_planted_direction_in_both_and_not_a_random_one(tmp_path):
    shared = frozen_a(_sweep(tmp_path, {s: (0.9, 0.9) for s in range(3)}), RANK, [0, 1, 2])
    for k in shared.kinds:  # the planted u is the top output direction of both runs' ΔW
        assert k.phi_11.lo > 0.8 and k.null_11.percentile == 100 and k.verdict == "holds"
        assert k.null_11.mean == pytest.approx(k.floor_11, rel=0.25)  # the null sits on the floor 1/n
    other = _sweep(tmp_path, {s: (0.9, 0.9) for s in range(3)}, shared=False, name="random-b")
    for k in frozen_a(other, RANK, [0, 1, 2]).kinds:  # frozen-A B without u: chance level
        assert k.phi_11.mean < 0.3 and k.verdict != "holds"


def test_without_frozen_a_runs_the_section_names_the_command(tmp_path):
    root = tmp_path / "plain"
    _, final = _factors(0, _direction(0), False, 0)
    lora_run(root, f"r{RANK}-s0", final, config={"rank": RANK, "seed": 0})
    text = "\n".join(frozen_a_section(Sweep.load(root)))
    assert "Not testable" in text and f"`{COMMAND}`" in text and "r8-s<seed>-frozenA" in text


def test_a_sweep_of_frozen_a_runs_only_says_which_twins_to_train(tmp_path):
    sweep = _sweep(tmp_path, {1: (0.9, 0.9)})
    shutil.rmtree(sweep.path / "r4-s1")
    with pytest.raises(LorascopeError, match=r"r4-s1-frozenA: trains one factor only .*rank=4 seed=1"):
        Sweep.load(sweep.path)
