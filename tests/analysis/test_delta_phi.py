"""φ between ΔW's singular bases from r × r Gram matrices equals φ of the factored SVD's bases."""

import numpy as np
import pytest
import torch

from lorascope import run_format
from lorascope.analysis.delta_phi import delta_phi
from lorascope.analysis.linalg import delta_svd
from lorascope.analysis.similarity import phi_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def _adapter(g, r, out, n_in, dtype, spread=1.0, scaling=2.0):
    A = torch.randn(r, n_in, generator=g) / r**0.5
    B = 0.01 * torch.randn(out, r, generator=g) @ torch.diag(torch.linspace(1.0, spread, r))
    return run_format.Adapter(A.to(dtype), B.to(dtype), scaling)


def _reference(a1, a2, side):
    (U1, S1, V1), (U2, S2, V2) = (delta_svd(a.A, a.B, a.scaling) for a in (a1, a2))
    return phi_grid(V1, V2) if side == "right" else phi_grid(U1, U2), S1, S2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("spread", [1.0, 0.02])  # B's columns alike, or spread over 50x (κ > 3: float64)
def test_equals_the_factored_svd(dtype, side, spread):
    g = torch.Generator().manual_seed(7)
    a1, a2 = _adapter(g, 16, 96, 200, dtype, spread), _adapter(g, 8, 96, 200, dtype, spread, scaling=-1.5)
    phi, S1, S2 = delta_phi(a1, a2, side)
    ref, R1, R2 = _reference(a1, a2, side)
    assert phi.shape == (16, 8)
    np.testing.assert_allclose(phi, ref, atol=1e-6)
    np.testing.assert_allclose(S1.numpy(), R1.numpy(), rtol=1e-5)
    np.testing.assert_allclose(S2.numpy(), R2.numpy(), rtol=1e-5)


def test_a_planted_shared_direction_gives_phi_one():
    """ΔW1 and ΔW2 share their top right singular vector: φ(1, 1) = 1."""
    g = torch.Generator().manual_seed(1)
    v, w = torch.linalg.qr(torch.randn(50, 2, generator=g, dtype=torch.float64))[0].T
    a1 = run_format.Adapter(torch.stack([v, w]),
                      torch.tensor([[5.0, 0.0], [0.0, 0.1]], dtype=torch.float64), 1.0)  # fmt: skip
    a2 = run_format.Adapter(v[None, :], torch.tensor([[3.0]], dtype=torch.float64), 1.0)
    phi, _, _ = delta_phi(a1, a2, "right")
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_an_ill_conditioned_factor_takes_the_qr_route():
    g = torch.Generator().manual_seed(2)
    a1 = _adapter(g, 4, 30, 40, torch.float32)
    zero = run_format.Adapter(a1.A, torch.zeros_like(a1.B), 2.0)  # B = 0 at initialisation
    assert delta_phi(zero, a1, "left") is None
