"""The DoRA paper's decomposition of a weight update (Liu et al. 2024, Sec. 2.2, Eqs. 3-4, Fig. 2).

With W = m ⊙ V/‖V‖ per output unit n (a row of the (out, in) weight: the paper's column of
W ∈ R^{d×k}, PEFT's norm over dim=1) and W′ = W + ΔW:

    ΔM = (1/k) Σ_n | ‖W′_n‖ − ‖W_n‖ |            magnitude change (Eq. 3)
    ΔD = (1/k) Σ_n (1 − cos(W′_n, W_n))          direction change (Eq. 4)

The paper plots ΔD against ΔM over layers and training steps: full fine-tuning and LoRA give a
positive correlation, DoRA a negative one. `correlation` gives that number (Pearson r).
"""

from __future__ import annotations

import numpy as np
import torch


def magnitude_direction(W: torch.Tensor, delta_weight: torch.Tensor) -> dict[str, float]:
    """ΔM and ΔD of W′ = W + ΔW against W, both (out, in), in float64."""
    W = W.double()
    Wp = W + delta_weight.double()
    norm, norm_p = torch.linalg.vector_norm(W, dim=1), torch.linalg.vector_norm(Wp, dim=1)
    cos = (W * Wp).sum(1) / (norm * norm_p)
    return {
        "delta_m": float((norm_p - norm).abs().mean()),
        "delta_d": float((1 - cos).mean()),
    }


def correlation(delta_m, delta_d) -> float:
    """Pearson r of ΔM and ΔD over (module, step) points; nan with fewer than 3 or no spread."""
    x, y = np.asarray(delta_d, float), np.asarray(delta_m, float)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
