"""ΔW's top-k bases from Gram matrices, batched (`gram_bases.delta_bases`), against the QR route
(`delta.factored_svd`) module by module: well- and ill-conditioned factors, rank-deficient ΔW,
both sides, negative scalings, mixed shapes and dtypes in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorascope.analysis.gram_bases import delta_bases
from lorascope.delta import factored_svd
from lorascope.run_format import Adapter


def _module(seed: int, r: int, n_in: int, n_out: int, *, spread=1.0, dead=0, dtype=torch.float32, s=2.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, n_in, generator=g, dtype=torch.float64) / r**0.5
    A = A * torch.logspace(0, -np.log10(spread), r, dtype=torch.float64)[:, None]  # κ(A) ~ spread
    B = 0.01 * torch.randn(n_out, r, generator=g, dtype=torch.float64)
    if dead:
        B[:, -dead:] = 0.0  # ΔW of rank r − dead
    return Adapter(A.to(dtype), B.to(dtype), s)


def _cases():
    return [
        _module(0, 16, 300, 200),  # well conditioned: float32 Gram route
        _module(1, 16, 300, 200, s=-0.5),  # negative scaling: U's sign as factored_svd's
        _module(2, 16, 300, 200, spread=30.0),  # κ ~ 30: float64 Gram route
        _module(3, 16, 300, 200, spread=1e6),  # κ > GRAM_MAX_COND: QR route
        _module(4, 16, 300, 200, dead=12),  # σ_k = 0 for k > 4: QR route decides the rank
        _module(5, 8, 120, 90),  # another shape in the same call
        _module(6, 16, 300, 200, dtype=torch.float64),  # float64 factors
        _module(7, 16, 300, 200, s=3.0),
    ]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("k", [1, 8, 16, 40])
def test_delta_bases_equal_the_qr_route_module_by_module(side, k):
    forms = _cases()
    got = delta_bases(forms, side, k)
    for f, (U, S) in zip(forms, got, strict=True):
        Ur, Sr, Vr = factored_svd(f.A, f.B, f.scaling)
        ref = (Vr if side == "right" else Ur)[:, :k]
        kk = min(k, f.rank)
        assert U.shape == (ref.shape[0], kk) and S.shape == (kk,)
        np.testing.assert_allclose(S.numpy(), Sr[:kk].numpy(), rtol=1e-5, atol=1e-7 * float(Sr[0]))
        live = int((Sr[:kk] > 1e-5 * Sr[0]).sum())  # columns past ΔW's rank are arbitrary in both
        cos = (U.double().T @ ref)[:live, :live]
        np.testing.assert_allclose(cos.abs().diagonal().numpy(), 1.0, atol=1e-5)
        np.testing.assert_allclose(
            (U.double().T @ U.double()).numpy(), np.eye(kk), atol=2e-6
        )  # orthonormal to float32 round-off


def test_delta_bases_reproduce_delta_w_itself():
    forms = _cases()[:3]
    for side in ("right", "left"):
        for f, (U, S) in zip(forms, delta_bases(forms, side, 16), strict=True):
            D = f.scaling * f.B.double() @ f.A.double()
            norms = (D @ U.double()).norm(dim=0) if side == "right" else (U.double().T @ D).norm(dim=1)
            np.testing.assert_allclose(norms.numpy(), S.numpy(), rtol=1e-5)
    assert delta_bases([], "right", 4) == []


def test_gram_scores_of_float32_bases_equal_the_float64_product(monkeypatch):
    from lorascope.analysis import adapter_map as am

    g = torch.Generator().manual_seed(9)
    n, N, k = 2000, 23, 6
    bases = [torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0] for _ in range(N)]
    bases[5] = bases[2].clone()  # identical subspaces: M_ab ≈ I, where float32 sums err most
    bases[7] = torch.linalg.qr(bases[3] + 1e-3 * torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    widths = [k - (a % 3) for a in range(N)]
    bases = [U[:, :w].float() for U, w in zip(bases, widths, strict=True)]
    Z = am.stack_bases(bases, k)
    monkeypatch.setattr(am, "GRAM_F32_FLOPS", 0)  # the float32 chunks at this small size too
    ref, kp_ref = am.gram_scores(Z.double(), widths, k)  # float64 products of the same float32 numbers
    dense = np.array([[np.mean([np.sum((a.double().T @ b.double())[:t, :t].numpy() ** 2) / t
                                for t in range(1, min(a.shape[1], b.shape[1]) + 1)])
                       for b in bases] for a in bases])  # fmt: skip
    np.testing.assert_allclose(ref, dense, atol=1e-12)
    for block_bytes in (am.BLOCK_BYTES, 8 * N * k * k * 3):  # one block per 3 adapters, or 8 blocks
        got, kp = am.gram_scores(Z, widths, k, block_bytes=block_bytes)
        np.testing.assert_allclose(got, ref, atol=1e-7)
        np.testing.assert_array_equal(kp, kp_ref)
        np.testing.assert_array_equal(got, got.T)
    assert abs(got[2, 5] - 1.0) < 1e-6 and abs(np.diag(got) - 1.0).max() < 1e-6
