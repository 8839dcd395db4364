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
    assert format_checks._norm(A) == pytest.approx(exact, rel=1e-6)
    huge = torch.full((4, 4), 1e20)  # ‖·‖² overflows float32, ‖·‖ = 4e20 does not
    exact = float(torch.linalg.vector_norm(huge.double()))
    assert format_checks._norm(huge) == pytest.approx(exact, rel=1e-6)
    format_checks.check_scale("f", "m", huge, torch.full((4, 4), 1e-30), 1.0)  # bound 1.6e-9: fine
    with pytest.raises(LorascopeError, match="overflow"):
        format_checks.check_scale("f", "m", huge, huge, 1.0)  # 1.6e41 > float32's max
    with pytest.raises(LorascopeError, match="overflow"):
        format_checks.check_scale("f", "m", A, B, 1e308)


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
