"""Adapter families whose ΔW is not the plain s · B A of an unchanged base (issue 19).

    dora.DoRADelta        ΔW = m ⊙ (W + s·B A) / ‖W + s·B A‖_row − W      (dense, W read lazily)
    shifted.ShiftedDelta  ΔW = s · (B A − B0 A0)                          (factored, rank 2r)
    layouts               embeddings, Conv1d/Conv2d kernels and MoE experts as plain factored Adapters
    direction             the DoRA paper's magnitude / direction changes ΔM, ΔD (its Fig. 2)

Every kind offers the ΔW protocol (shape, rank, delta_weight, matvec, rmatvec, svd, factors).
"""
