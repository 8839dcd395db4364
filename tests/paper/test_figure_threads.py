"""`lorascope figures` runs the recipes of a sweep of small modules on one CPU thread (their r-column
QRs and SVDs lose more to OpenMP on a shared CPU than threads give) and leaves a large base's alone."""

from __future__ import annotations

import torch
from factories import lora_run, random_factors

from lorascope.paper import recipes
from lorascope.paper.sweep import Sweep


def _sweep(tmp_path, n: int) -> Sweep:
    factors = random_factors({"encoder.layer.0.attention.self.query": (n, n)}, rank=1, seed=0)
    lora_run(tmp_path / f"n{n}", "r1-s0", factors, config={"rank": 1, "seed": 0})
    return Sweep.load(tmp_path / f"n{n}")


def test_threads_during_the_recipes_follow_the_module_size(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setitem(
        recipes.RECIPES, "ranks", lambda sweep, opts: seen.append(torch.get_num_threads()) or []
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n, expected in ((48, 1), (1024, 2)):  # 1024 · 1024 = krylov.SMALL: no longer small
            sweep = _sweep(tmp_path, n)
            assert recipes.small_modules(sweep) is (n == 48)
            recipes.make_figures(sweep.path, tmp_path / "out", recipes=["ranks"])
            assert seen[-1] == expected and torch.get_num_threads() == 2  # restored after
    finally:
        torch.set_num_threads(before)
