"""Spectrum metrics on hand-made spectra, and the spectrum of ΔW against the dense SVD."""

import math

import numpy as np
import pytest
import torch

from lorascope import analysis as la
from lorascope.run_format import Adapter


def test_flat_spectrum_uses_every_direction():
    m = la.spectrum_metrics([2.0, 2.0, 2.0, 2.0])
    assert m["energy_rank"] == 4  # 3 directions hold only 75 %
    assert m["stable_rank"] == pytest.approx(4.0)
    assert m["effective_rank"] == pytest.approx(4.0)
    assert m["fro_norm"] == pytest.approx(4.0)


def test_two_direction_spectrum_by_hand():
    m = la.spectrum_metrics([1.0, 3.0])  # order does not matter
    assert m["sigma_1"] == 3.0
    assert m["energy_rank"] == 1  # 9 / 10 = exactly 90 %
    assert m["stable_rank"] == pytest.approx(10 / 9)
    assert m["effective_rank"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert la.spectrum_metrics([1.0, 3.0], energy=0.95)["energy_rank"] == 2


def test_rank_one_and_zero_spectra():
    m = la.spectrum_metrics([5.0, 0.0, 0.0])
    assert (m["energy_rank"], m["stable_rank"], m["effective_rank"]) == (1, 1.0, 1.0)
    z = la.spectrum_metrics([0.0, 0.0])
    assert (z["energy_rank"], z["stable_rank"], z["effective_rank"], z["fro_norm"]) == (0, 0.0, 0.0, 0.0)


def test_spectrum_of_delta_matches_dense_svd():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(6, 30, generator=g), torch.randn(20, 6, generator=g)
    res = la.spectrum(Adapter(A, B, 0.5))
    dense = torch.linalg.svdvals(0.5 * (B.double() @ A.double()))[:6].numpy()
    np.testing.assert_allclose(res["singular_values"], dense, rtol=1e-10)
    assert res["fro_norm"] == pytest.approx(float(torch.linalg.matrix_norm(0.5 * B.double() @ A.double())))
    assert res["stable_rank"] == pytest.approx(float(np.sum(dense**2) / dense[0] ** 2))
    assert 1 <= res["energy_rank"] <= 6 and 1 <= res["effective_rank"] <= 6


def test_spectrum_at_init_is_zero():
    res = la.spectrum(Adapter(torch.ones(4, 8), torch.zeros(5, 4), 2.0))
    assert res["energy_rank"] == 0 and np.all(res["singular_values"] == 0)
