"""The ΔW protocol for a kind whose ΔW is formed densely (on first use): products and SVD from it."""

from __future__ import annotations

import torch


class DenseOps:
    """Mixin: needs `delta_weight() -> (out, in)`; gives shape, rank None, matvec, rmatvec, svd."""

    rank = None  # no factored form: the protocol's dense ΔW
    factored_form = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.delta_weight().shape)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def matvec(self, X: torch.Tensor) -> torch.Tensor:
        """ΔW @ X, X (in, m)."""
        D = self.delta_weight()
        return D.to(X.dtype) @ X

    def rmatvec(self, Y: torch.Tensor) -> torch.Tensor:
        """ΔWᵀ @ Y, Y (out, m)."""
        D = self.delta_weight()
        return D.to(Y.dtype).T @ Y

    def svd(self, k: int | None = None, algorithm: str = "auto"):
        """(U (out, k), S (k,), V (in, k)) float64, σ descending; k None: all min(out, in); through the
        one truncated-SVD entry point (`lorascope.delta.truncated_svd`), as for any dense ΔW."""
        from lorascope.delta import DenseDelta

        return DenseDelta(self.delta_weight()).svd(k, algorithm)
