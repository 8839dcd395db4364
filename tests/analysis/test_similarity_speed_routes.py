"""The routes that make `similarity` cheap, each against the straightforward computation: the one-pass
finite and scale checks of a factor file, A − A0 in float32 (modules side by side: test_module_pool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorascope import format_checks, run_format
from lorascope.analysis import similarity as sim
from lorascope.analysis.factors import learned_part
from lorascope.analysis.linalg import factor_svd
from lorascope.errors import LorascopeError


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_one_non_finite_entry_is_refused(bad, dtype):
    t = torch.randn(8, 64).to(dtype)
    t[3, 17] = bad
    with pytest.raises(LorascopeError, match="non-finite"):
        run_format.check_finite("f.safetensors", "m", "lora_A", t)


def test_inf_and_minus_inf_together_are_refused():
    t = torch.zeros(4, 4)
    t[0, 0], t[1, 1] = float("inf"), -float("inf")  # their sum is NaN: still not finite
    with pytest.raises(LorascopeError, match="non-finite"):
        run_format.check_finite("f.safetensors", "m", "lora_B", t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_huge_finite_entries_whose_sum_overflows_are_accepted(dtype):
    big = torch.finfo(dtype).max / 2
    t = torch.full((16, 16), big, dtype=dtype)  # the sum overflows to inf; every entry is finite
    assert not np.isfinite(float(t.sum()))
    run_format.check_finite("f.safetensors", "m", "lora_A", t)  # no error
    run_format.check_finite("f.safetensors", "m", "lora_A", torch.zeros(0, 3))


def test_scale_check_equals_the_float64_bound_and_survives_a_float32_norm_overflow():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(8, 300, generator=g), torch.randn(200, 8, generator=g)
    exact = float(torch.linalg.vector_norm(A.double()))
    assert format_checks.frobenius(A) == pytest.approx(exact, rel=1e-6)
    huge = torch.full((4, 4), 1e20)  # ‖·‖² overflows float32, ‖·‖ = 4e20 does not
    exact = float(torch.linalg.vector_norm(huge.double()))
    assert format_checks.frobenius(huge) == pytest.approx(exact, rel=1e-6)
    format_checks.check_scale("f", "m", huge, torch.full((4, 4), 1e-30), 1.0)  # bound 1.6e-9: fine
    with pytest.raises(LorascopeError, match="overflow"):
        format_checks.check_scale("f", "m", huge, huge, 1.0)  # 1.6e41 > float32's max
    with pytest.raises(LorascopeError, match="overflow"):
        format_checks.check_scale("f", "m", A, B, 1e308)
    for bad in (float("nan"), float("inf")):  # a finite norm means finite entries, and only then
        X = A.clone()
        X[2, 5] = bad
        assert not np.isfinite(format_checks.frobenius(X))
    assert np.isfinite(format_checks.frobenius(torch.full((64, 64), 3e38)))  # f32 ‖·‖² overflows: float64


def test_learned_part_in_float32_is_the_exact_difference_rounded_once():
    g = torch.Generator().manual_seed(1)
    A0 = torch.randn(16, 512, generator=g)
    A = A0 + 1e-3 * torch.randn(16, 512, generator=g)  # a small learned part: cancellation
    D = learned_part(A, A0)
    assert D.dtype == torch.float32
    torch.testing.assert_close(D, (A.double() - A0.double()).float(), rtol=0, atol=0)
    assert learned_part(A.double(), A0).dtype == torch.float64  # float64 in: float64 out
    low, low0 = A.bfloat16(), A0.bfloat16()
    torch.testing.assert_close(learned_part(low, low0), low.float() - low0.float(), rtol=0, atol=0)


@pytest.mark.parametrize("spread", [1.0, 1e3])  # κ ≈ 1 (float32 Gram route), κ ~ 1e3 (float64 route)
def test_learned_a_similarity_equals_the_dense_float64_svds(spread):
    g = torch.Generator().manual_seed(2)
    n, r1, r2 = 700, 6, 9
    scales = [torch.logspace(0, -np.log10(spread), r) for r in (r1, r2)]
    A0s = [torch.randn(r, n, generator=g) for r in (r1, r2)]
    As = [
        A0 + 1e-2 * s[:, None] * torch.randn(len(s), n, generator=g)
        for A0, s in zip(A0s, scales, strict=True)
    ]
    got = sim.learned_a_similarity(As[0], A0s[0], As[1], A0s[1])
    svd = torch.linalg.svd
    dense = [svd(A.double() - A0.double(), full_matrices=False)[2].T for A, A0 in zip(As, A0s, strict=True)]
    np.testing.assert_allclose(got, sim.phi_grid(*dense), atol=2e-6)
    np.testing.assert_allclose(
        got, sim.phi_grid(factor_svd(As[0].double() - A0s[0].double())[0], dense[1]), atol=2e-6
    )


@pytest.mark.parametrize("factor", ["A", "B", "dA", "dW-right", "dW-left"])
def test_run_similarity_on_threads_equals_one_thread_and_the_dense_bases(tmp_path, factor):
    from analysis_fixtures import make_run, shared_directions

    from lorascope.analysis.factors import get_factor
    from lorascope.compare import run_similarity
    from lorascope.runs import load_run

    shared = shared_directions(32, 2)
    a = load_run(make_run(tmp_path, "r4-s0", 4, shared=shared, seed=0))
    b = load_run(make_run(tmp_path, "r8-s1", 8, shared=shared, seed=1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = run_similarity(a, b, factor)
        torch.set_num_threads(3)  # three modules at once, whatever the CPU count
        pooled = run_similarity(a, b, factor)
    finally:
        torch.set_num_threads(threads)
    spec = get_factor(factor)
    assert list(pooled.grids) == list(serial.grids)
    for m, grid in pooled.grids.items():
        np.testing.assert_array_equal(grid.to_numpy(), serial.grids[m].to_numpy())  # bit for bit
        inits = [r.init[m] if r.init is not None else None for r in (a, b)]
        if spec.matrix is not None:  # the straightforward route: float64 SVDs of the factors
            mats = [spec.matrix(r.adapters[m], i) for r, i in zip((a, b), inits, strict=True)]
            dense = [factor_svd(torch.as_tensor(X).double(), spec.side)[0] for X in mats]
        else:  # ... and of ΔW formed densely
            dense = [_dense_basis(r.adapters[m], spec.side) for r in (a, b)]
        np.testing.assert_allclose(grid.to_numpy(), sim.phi_grid(*dense), atol=2e-6)


def _dense_basis(adapter, side: str) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(adapter.delta_weight().double(), full_matrices=False)
    return (Vh.T if side == "right" else U)[:, : adapter.rank]


@pytest.mark.parametrize("part", ["lora_A", "lora_B"])
def test_reading_a_factor_file_names_the_factor_that_holds_a_nan(tmp_path, part):
    g = torch.Generator().manual_seed(3)
    tensors = {"m.lora_A": torch.randn(4, 30, generator=g), "m.lora_B": torch.randn(20, 4, generator=g)}
    meta = run_format.adapter_metadata(
        rank=4, alpha=8, scaling=2.0, base_model="x", targets=["m"], init="gaussian", rslora=False
    )
    run_format.save_adapter(tmp_path / "good.safetensors", tensors, meta)
    adapters, _ = run_format.read_adapter(tmp_path / "good.safetensors")
    torch.testing.assert_close(adapters["m"].A, tensors["m.lora_A"], rtol=0, atol=0)
    tensors[f"m.{part}"][1, 2] = float("nan")
    run_format.save_adapter(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(LorascopeError, match=f"non-finite values .* in {part}"):
        run_format.read_adapter(tmp_path / "bad.safetensors")
