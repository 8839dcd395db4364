"""Intervals over seeds, null distributions and floors (analysis.stats, analysis.nulls, similarity
floors), and the normalised, weighted and signed scores of `compare` on three adapters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from analysis_fixtures import write_adapter

from lorascope.analysis.delta_cosine import delta_cosine, delta_inner
from lorascope.analysis.nulls import gaussian_energy_rank, random_projection_draws
from lorascope.analysis.similarity import (
    block_mean_draws,
    block_mean_floor,
    diag_mean_floor,
    random_phi_baseline,
)
from lorascope.analysis.stats import N_NULL, null_summary, pair_interval, seed_interval
from lorascope.compare.maps import adapter_map
from lorascope.errors import LorascopeError
from lorascope.paper.verdicts import FAILS, HOLDS, ONE_SEED, UNDECIDED, decide
from lorascope.run_format import Adapter


def _haar(n, k, g):
    Q, R = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))


# ---------------------------------------------------------------- floors


def test_block_mean_floor_is_the_mean_of_max_over_n_not_the_corner():
    # Fig. 4's table compared the 8 × 8 block mean with 8/n = 0.021; the block's own floor is 0.0151
    assert block_mean_floor(8, 8, 384) == pytest.approx(0.015137, abs=1e-6)
    assert block_mean_floor(8, 8, 384) < 8 / 384
    i, j = np.meshgrid(np.arange(1, 4), np.arange(1, 6), indexing="ij")
    assert block_mean_floor(3, 5, 10) == pytest.approx(np.mean(np.maximum(i, j) / 10))
    assert diag_mean_floor(8, 384) == pytest.approx(9 / (2 * 384))


@pytest.mark.parametrize(("a", "b", "r", "n"), [(8, 8, 16, 384), (4, 8, 8, 64)])
def test_analytic_block_mean_floors_equal_monte_carlo_to_two_percent(a, b, r, n):
    # the block mean's sd is ~ 0.25-0.35 of its mean: 2000 draws put the Monte Carlo mean within 0.8 %
    draws = block_mean_draws((r, n), (r, n), a, b, n_draws=2000, seed=1)
    assert draws.mean() == pytest.approx(block_mean_floor(a, b, n), rel=0.02)


def test_analytic_floor_of_every_cell_equals_monte_carlo():
    g = torch.Generator().manual_seed(3)
    Q1, _ = torch.linalg.qr(torch.randn(4000, 40, 6, generator=g, dtype=torch.float64))  # Haar flags
    Q2, _ = torch.linalg.qr(torch.randn(4000, 40, 6, generator=g, dtype=torch.float64))
    P = ((Q1.transpose(1, 2) @ Q2) ** 2).cumsum(1).cumsum(2).mean(0).numpy()
    phi = P / np.minimum.outer(np.arange(1, 7), np.arange(1, 7))
    np.testing.assert_allclose(phi, random_phi_baseline(6, 6, 40), rtol=0.06)


# ---------------------------------------------------------------- intervals


def test_seed_interval_covers_the_mean_and_says_nothing_for_one_seed():
    rng = np.random.default_rng(0)
    ci = seed_interval(rng.normal(1.0, 0.1, size=(8, 3)))  # 8 seeds, 3 layers (strata)
    assert ci.has_interval and ci.lo < ci.mean < ci.hi and ci.n_seeds == 8
    assert 0.9 < ci.lo and ci.hi < 1.1
    one = seed_interval([0.7])
    assert not one.has_interval and math.isnan(one.lo) and one.mean == 0.7
    assert decide(one, 0.5) == ONE_SEED


def test_stratified_bootstrap_resamples_within_strata():
    # stratum 0 has no spread, stratum 1 a lot: the interval's width comes from stratum 1 alone, halved
    x = np.stack([np.zeros(6), np.arange(6.0)], axis=1)
    ci = seed_interval(x, seed=2)
    single = seed_interval(np.arange(6.0), seed=2)
    assert ci.mean == pytest.approx(single.mean / 2)
    assert ci.hi - ci.lo == pytest.approx((single.hi - single.lo) / 2, rel=0.15)


def test_pair_interval_needs_three_seeds():
    assert not pair_interval(np.array([[np.nan, 0.4], [np.nan, np.nan]])).has_interval
    M = np.full((4, 4), np.nan)
    M[np.triu_indices(4, 1)] = [0.5, 0.52, 0.48, 0.51, 0.49, 0.5]
    ci = pair_interval(M)
    assert ci.has_interval and ci.lo <= 0.5 <= ci.hi and ci.mean == pytest.approx(0.5)


def test_decide_reads_the_whole_interval():
    ci = seed_interval([0.6, 0.62, 0.64, 0.61])
    assert decide(ci, 0.5) == HOLDS and decide(ci, 0.7) == FAILS and decide(ci, 0.62) == UNDECIDED
    assert decide(ci, 0.7, above=False) == HOLDS


# ---------------------------------------------------------------- nulls: the planted case


def test_random_projection_null_matches_its_expectation():
    W = torch.randn(48, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = 4
    draws = random_projection_draws(W, k, n_draws=N_NULL, seed=0)
    assert draws.shape == (N_NULL,)
    expected = math.sqrt(k * k * float(W.norm()) ** 2 / (48 * 40))  # E‖UᵀWV‖² = k² ‖W‖² / (out · in)
    assert np.sqrt(np.mean(draws**2)) == pytest.approx(expected, rel=0.08)
    np.testing.assert_array_equal(draws, random_projection_draws(W, k, n_draws=N_NULL, seed=0))  # seeded
    with pytest.raises(LorascopeError):
        random_projection_draws(W, 41)


def test_planted_delta_percentile_is_right_and_one_lucky_draw_cannot_turn_the_verdict():
    """W with a planted spectrum; ΔW along directions where ‖UᵀWV‖ is known exactly."""
    g = torch.Generator().manual_seed(4)
    n, k = 64, 2
    U0, V0 = _haar(n, n, g), _haar(n, n, g)
    sigma = torch.linspace(10.0, 0.1, n, dtype=torch.float64)
    W = U0 @ torch.diag(sigma) @ V0.T
    draws = random_projection_draws(W, k, n_draws=400, seed=1)
    null = null_summary(0.0, draws)
    # ΔW's directions planted on W's singular pairs 20, 21: ‖UᵀWV‖ = √(σ20² + σ21²), exactly
    observed = float(torch.linalg.vector_norm(sigma[20:22]))
    U, V = U0[:, 20:22], V0[:, 20:22]
    assert float(torch.linalg.matrix_norm(U.T @ W @ V)) == pytest.approx(observed)
    s = null_summary(observed, draws)
    assert s.percentile == pytest.approx(100 * np.mean(draws < observed), abs=1e-9)
    assert s.mean == pytest.approx(draws.mean()) and s.sd == pytest.approx(draws.std(ddof=1))
    assert null.percentile == 0.0
    # seeds of ΔW around the planted value: the interval and its verdict against the null's q95
    ci = seed_interval(observed + np.array([-0.05, 0.0, 0.05, 0.02]))
    assert ci.lo < observed < ci.hi
    verdict = decide(ci, s.q95)
    # a single draw from the null's upper tail (what the one-draw table compared with) would say
    # "ΔW below random" whenever it lands above ΔW; the distribution's q95 decides instead, and it
    # is the same whatever draw came first
    lucky = float(draws.max())
    assert (observed > lucky) != (verdict == HOLDS) or observed > lucky
    assert decide(ci, null_summary(observed, random_projection_draws(W, k, 400, seed=2)).q95) == verdict


def test_gaussian_control_of_the_energy_rank():
    # a 384 × 384 Gaussian needs about 196 directions for 90 % of its energy (Marchenko–Pastur)
    assert gaussian_energy_rank((384, 384), n_draws=2) == pytest.approx(196, abs=3)


# ---------------------------------------------------------------- compare on three adapters


def _factors(seed, modules, n_in=32, n_out=24, rank=4):
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(rank, n_in, generator=g), torch.randn(n_out, rank, generator=g)) for m in modules}


def test_delta_cosine_is_signed_and_invariant_to_the_factorisation():
    g = torch.Generator().manual_seed(0)
    A, B = (
        torch.randn(4, 20, generator=g, dtype=torch.float64),
        torch.randn(12, 4, generator=g, dtype=torch.float64),
    )
    A2, B2 = (
        torch.randn(4, 20, generator=g, dtype=torch.float64),
        torch.randn(12, 4, generator=g, dtype=torch.float64),
    )
    R = torch.randn(4, 4, generator=g, dtype=torch.float64) + 3 * torch.eye(4, dtype=torch.float64)
    a, b = Adapter(A, B, 0.5), Adapter(A2, B2, 2.0)
    dense = (0.5 * B @ A).ravel() @ (2.0 * B2 @ A2).ravel()
    assert delta_inner(a, b) == pytest.approx(float(dense))
    assert delta_cosine(Adapter(torch.linalg.solve(R, A), B @ R, 0.5), b) == pytest.approx(delta_cosine(a, b))
    assert delta_cosine(a, Adapter(A, -B, 0.5)) == pytest.approx(-1.0)


def test_compare_normalises_weights_and_signs_on_three_adapters(tmp_path):
    small = ["encoder.layer.0.attention.self.query"]
    wide = ["encoder.layer.0.attention.self.value"]
    base = _factors(1, small + wide)
    # the second adapter: ΔW = −ΔW of the first (B → −B); the third: unrelated
    neg = {m: (A, -B) for m, (A, B) in base.items()}
    paths = [
        write_adapter(tmp_path, "a", base),
        write_adapter(tmp_path, "neg", neg),
        write_adapter(tmp_path, "other", _factors(7, small + wide)),
    ]
    plain = adapter_map(paths, k=4)
    # φ is sign-blind: ΔW and −ΔW have the same subspaces
    assert plain.similarity.loc["a", "neg"] == pytest.approx(1.0, abs=1e-6)
    signed = adapter_map(paths, k=4, signed=True)
    assert signed.similarity.loc["a", "neg"] == pytest.approx(-1.0, abs=1e-6)
    assert abs(signed.similarity.loc["a", "other"]) < 0.5 and signed.floor_range() == (0.0, 0.0)
    # normalised: each module's (φ − floor)/(1 − floor) before averaging, floor (k + 1)/(2n) of its n
    norm = adapter_map(paths, k=4, normalize=True)
    by = plain.by_kind.set_index(["run_a", "run_b", "kind"])
    per = [
        (by.loc[("a", "other", k), "similarity"] - by.loc[("a", "other", k), "random_floor"])
        / (1 - by.loc[("a", "other", k), "random_floor"])
        for k in ("attention.self.query", "attention.self.value")
    ]
    assert norm.similarity.loc["a", "other"] == pytest.approx(np.mean(per))
    assert norm.floor_range() == (0.0, 0.0) and norm.normalized
    # energy weights: the module whose ΔW is larger counts more
    big = {m: (A, 10 * B) if m in wide else (A, B) for m, (A, B) in _factors(7, small + wide).items()}
    paths[2] = write_adapter(tmp_path, "other-big", big)
    energy = adapter_map(paths, k=4, weight="energy")
    kinds = energy.by_kind.set_index(["run_a", "run_b", "kind"]).similarity
    v = kinds.loc[("a", "other-big", "attention.self.value")]
    q = kinds.loc[("a", "other-big", "attention.self.query")]
    assert abs(energy.similarity.loc["a", "other-big"] - v) < abs(energy.similarity.loc["a", "other-big"] - q)
    with pytest.raises(LorascopeError):
        adapter_map(paths, weight="loud")


def test_one_verdict_from_parts():
    from lorascope.paper.verdicts import ONE_PAIR, verdict

    assert verdict([True, HOLDS]) == "**holds**" and verdict([False]) == "**does not hold**"
    assert verdict([ONE_PAIR, ONE_PAIR]) == "**one pair of seeds: no interval**"
    assert verdict([ONE_SEED]) == "**one seed: no interval**"
    assert verdict([HOLDS, ONE_SEED]).startswith("**holds where testable**")
    assert verdict([HOLDS, FAILS]).startswith("**mixed**") and verdict([]) == "**not testable**"
