"""Trajectories from snapshots: equal to dense recomputation from the files, known planted answers,
a real tiny training run, first_step_reached, the figure, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from analysis_fixtures import MODULES, make_run

from lorascope import run_format, runs
from lorascope.analysis.trajectory import (
    COLUMNS,
    QUANTITIES,
    first_step_by_kind,
    first_step_reached,
    kind_summary,
    trajectory_frame,
)
from lorascope.compare.trajectories import final_step, run_trajectory, trajectory_plan
from lorascope.errors import LorascopeError
from lorascope.names import module_kind
from lorascope.run_format import Adapter

N_IN, N_OUT, RANK = 20, 12, 4


def _meta(scaling: float, **extra):
    return run_format.adapter_metadata(
        rank=RANK, alpha=scaling * RANK, scaling=scaling, base_model="synthetic",
        targets=["query", "value"], init="gaussian", rslora=False, **extra,
    )  # fmt: skip


def _write(path, adapters: dict[str, Adapter], **extra):
    tensors = {}
    for m, ad in adapters.items():
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = ad.A, ad.B
    run_format.save_adapter(path, tensors, _meta(next(iter(adapters.values())).scaling, **extra))


def planted_run(root, factors_at, steps, final, scaling=2.0, snapshots=True, init=True):
    """A run folder whose factors at step t are factors_at(module_index, t) -> (A, B)."""
    run = root / "r4-s0"
    at = {
        t: {m: Adapter(*factors_at(i, t), scaling) for i, m in enumerate(MODULES)} for t in (0, *steps, final)
    }
    if init:
        _write(run / run_format.INIT_FILE, at[0])
    for t in steps if snapshots else ():
        _write(run / run_format.CHECKPOINT_DIR / f"step-{t}" / run_format.ADAPTER_FILE, at[t], step=t)
    _write(run / run_format.ADAPTER_FILE, at[final], step=final)
    run_format.write_config(run, {"rank": RANK})
    run_format.write_summary(run, {"status": "complete", "steps": final})
    return run


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- dense reference


def _dense(ad: Adapter):
    """U, σ, V of ΔW = s B A formed densely, in float64."""
    dW = ad.scaling * (ad.B.double() @ ad.A.double())
    U, S, Vh = torch.linalg.svd(dW)
    return U, S, Vh.T


def _phi(X, Y, i, j):
    """φ(i, j) straight from eq. 4: ‖X[:, :i]ᵀ Y[:, :j]‖²_F / min(i, j)."""
    return float(torch.linalg.matrix_norm(X[:, :i].T @ Y[:, :j]) ** 2) / min(i, j)


def _dense_row(ad: Adapter, A0, final: Adapter, k: int) -> dict:
    r = ad.A.shape[0]
    U, S, V = _dense(ad)
    UT, _, VT = _dense(final)
    S = S[:r]
    energy = torch.cumsum(S**2, 0) / (S**2).sum()
    zero = float(S[0]) == 0.0
    D = ad.A.double() - A0.double()
    VA = torch.linalg.svd(ad.A.double(), full_matrices=False)[2].T
    VA0 = torch.linalg.svd(A0.double(), full_matrices=False)[2].T
    dW = float(torch.linalg.matrix_norm(ad.scaling * (ad.B.double() @ ad.A.double())))
    nan = float("nan")
    return {
        "dA_norm": float(torch.linalg.matrix_norm(D)),
        "dA_rel": float(torch.linalg.matrix_norm(D) / torch.linalg.matrix_norm(A0.double())),
        "B_norm": float(torch.linalg.matrix_norm(ad.B.double())),
        "dW_norm": dW,
        "stable_rank": 0.0 if zero else float((S**2).sum() / S[0] ** 2),
        "energy_rank": 0 if zero else int((energy < 0.9 - 1e-12).sum()) + 1,
        "phi_in_11": nan if zero else _phi(V, VT, 1, 1),
        "phi_in_kk": nan if zero else _phi(V, VT, k, k),
        "phi_out_11": nan if zero else _phi(U, UT, 1, 1),
        "phi_out_kk": nan if zero else _phi(U, UT, k, k),
        "phi_A_A0": _phi(VA, VA0, r, r),
        "dW_dA_ratio": nan if zero else float(torch.linalg.matrix_norm(ad.scaling * ad.B.double() @ D)) / dW,
    }


def _check_against_files(frame: pd.DataFrame, run_dir, k: int):
    """Every number of the frame equals the dense recomputation from the files on disk."""
    run = runs.load_run(run_dir)
    init = run_format.read_adapter(run_dir / run_format.INIT_FILE)[0]
    final = run_format.read_adapter(run_dir / run_format.ADAPTER_FILE)[0]
    files = {0: run_dir / run_format.INIT_FILE, **run.checkpoints()}
    files.setdefault(final_step(run), run_dir / run_format.ADAPTER_FILE)
    assert sorted(frame["step"].unique()) == sorted(files)
    for step, path in files.items():
        adapters = run_format.read_adapter(path)[0]
        for m, ad in adapters.items():
            row = frame[(frame["module"] == m) & (frame["step"] == step)]
            assert len(row) == 1
            kk = int(row["k"].iloc[0])
            assert kk == min(k, ad.A.shape[0])  # ΔW_T has full rank here
            want = _dense_row(ad, init[m].A, final[m], kk)
            got = row.iloc[0]
            for q, v in want.items():
                if math.isnan(v):
                    assert math.isnan(got[q]), (m, step, q)
                else:
                    assert got[q] == pytest.approx(v, rel=1e-6, abs=1e-9), (m, step, q)


# ----------------------------------------------------------------------------- tests


def test_trajectory_equals_dense_recomputation_from_files(tmp_path):
    def factors(i, t):  # A drifts from A0, B grows with a changing direction
        A0 = _random((RANK, N_IN), 10 + i)
        A = A0 + 0.05 * t * _random((RANK, N_IN), 100 + i)
        B = torch.zeros(N_OUT, RANK) if t == 0 else t * _random((N_OUT, RANK), 200 + i) + t**2 * 0.3
        return A, B

    run_dir = planted_run(tmp_path, factors, steps=(2, 4, 6), final=7)
    df = run_trajectory(run_dir, k=3)
    assert list(df.columns) == COLUMNS
    assert df.groupby("module").size().tolist() == [5] * len(MODULES)  # steps 0, 2, 4, 6 and T = 7
    assert df["module"].drop_duplicates().tolist() == MODULES
    assert df[df["module"] == MODULES[0]]["step"].tolist() == [0, 2, 4, 6, 7]
    _check_against_files(df, run_dir, k=3)
    at_T = df[df["step"] == 7]
    for q in ("phi_in_11", "phi_in_kk", "phi_out_11", "phi_out_kk"):
        np.testing.assert_allclose(at_T[q], 1.0, atol=1e-12)


def test_planted_growth_along_fixed_directions(tmp_path):
    """B_t = t · B1, A_t = A0: ΔW_t = t · ΔW_1, so every direction is the final one for t > 0,
    ‖ΔW_t‖ is linear in t, A has not moved (φ(A_t, A0) = 1) and no part of ΔW comes from A."""
    b = [_random((N_OUT, 1), 300 + i) @ _random((1, RANK), 400 + i) for i in range(len(MODULES))]
    full = [_random((N_OUT, RANK), 500 + i) for i in range(len(MODULES))]

    def factors(i, t):
        B1 = b[i] if i % 2 == 0 else full[i]  # a rank-1 B (b cᵀ) and a full-rank one
        return _random((RANK, N_IN), 10 + i), t * B1

    steps = (1, 2, 3, 4, 5)
    df = run_trajectory(planted_run(tmp_path, factors, steps=steps, final=5), k=8)
    later = df[df["step"] > 0]
    for q in ("phi_in_11", "phi_in_kk", "phi_out_11", "phi_out_kk", "phi_A_A0"):
        np.testing.assert_allclose(later[q], 1.0, atol=1e-10)
    np.testing.assert_allclose(df[df["step"] == 0]["phi_A_A0"], 1.0, atol=1e-12)
    assert (df["dA_norm"] == 0).all() and (df["dA_rel"] == 0).all()
    assert (later["dW_dA_ratio"] == 0).all()
    # k is capped by ΔW_T's rank: 1 for the rank-1 B, r for the others
    assert df.groupby("module")["k"].first().tolist() == [1, RANK, 1, RANK]
    for _, g in df.groupby("module"):
        g = g.set_index("step")
        np.testing.assert_allclose(g["dW_norm"], g["dW_norm"].loc[1] * g.index.to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(g["B_norm"], g["B_norm"].loc[1] * g.index.to_numpy(), rtol=1e-6)
    step0 = df[df["step"] == 0]
    for q in ("phi_in_11", "phi_in_kk", "phi_out_11", "phi_out_kk", "dW_dA_ratio"):
        assert step0[q].isna().all(), q  # ΔW_0 = 0 has no directions
    assert (step0["dW_norm"] == 0).all() and (step0["energy_rank"] == 0).all()
    reached = first_step_reached(df)
    assert reached["step"].tolist() == [1.0] * len(MODULES)
    assert reached["fraction"].tolist() == [0.2] * len(MODULES)


def test_first_step_reached_stay_or_first():
    steps = [0, 1, 2, 3, 4]
    phi = {"m.0.q": [np.nan, 0.95, 0.5, 0.92, 1.0], "m.1.q": [np.nan, 0.1, 0.2, 0.3, 1.0]}
    frame = pd.DataFrame(
        [
            {"module": m, "kind": module_kind(m), "layer": int(m.split(".")[1]), "step": s,
             "phi_in_11": v, "phi_out_11": 1.0 if s else np.nan}
            for m, vs in phi.items() for s, v in zip(steps, vs, strict=True)
        ]
    )  # fmt: skip
    settled = first_step_reached(frame, 0.9)
    assert settled["step"].tolist() == [3.0, 4.0] and settled["fraction"].tolist() == [0.75, 1.0]
    first = first_step_reached(frame, 0.9, stay=False)
    assert first["step"].tolist() == [1.0, 4.0]
    assert first_step_reached(frame, 0.9, columns=["phi_out_11"], stay=False)["step"].tolist() == [1.0, 1.0]
    by_kind = first_step_by_kind(settled)
    assert by_kind.loc["q", "modules"] == 2 and by_kind.loc["q", "step_median"] == 3.5
    with pytest.raises(LorascopeError, match="threshold"):
        first_step_reached(frame, 1.5)
    with pytest.raises(LorascopeError, match="no column"):
        first_step_reached(frame.drop(columns="phi_out_11"))


def test_real_tiny_training_run(tiny_bert, topic_jsonl, tmp_path):
    from conftest import tiny_config

    from lorascope.train import train

    out = tmp_path / "r2-s0"
    train(tiny_config(tiny_bert, topic_jsonl, steps=5, train={"snapshot_every": 2, "eval_every": 0}), out)
    df = run_trajectory(out)
    run = runs.load_run(out)
    assert sorted(run.checkpoints()) == [2, 4]
    assert len(df) == len(run.adapters) * 4  # steps 0, 2, 4 and the final 5
    for _, g in df.groupby("module"):
        assert g["step"].tolist() == [0, 2, 4, 5]
    assert set(df["kind"]) == {"attention.self.query", "attention.self.value"}
    assert df["layer"].tolist()[:4] == [0, 0, 0, 0]
    assert (df["k"] == 2).all()  # k = 8 capped by r = 2
    assert df[df["step"] == 0][["phi_in_11", "phi_out_kk"]].isna().all().all()
    assert (df[df["step"] > 0]["B_norm"] > 0).all() and (df[df["step"] > 0]["dA_rel"] > 0).all()
    _check_against_files(df, out, k=8)
    summary = kind_summary(df)
    assert list(summary.index) == ["attention.self.query", "attention.self.value"]
    assert (summary["step"] == 5).all() and (summary["modules"] == 2).all()
    sub = run_trajectory(run, k=1, modules="query", layers="1")
    assert sub["module"].unique().tolist() == ["bert.encoder.layer.1.attention.self.query"]
    assert (sub["k"] == 1).all()


def test_trajectory_without_init_or_snapshots(tmp_path, caplog):
    def factors(i, t):
        return _random((RANK, N_IN), 10 + i) * (1 + 0.1 * t), torch.full((N_OUT, RANK), float(t))

    only_init = run_trajectory(planted_run(tmp_path / "a", factors, steps=(3,), final=3, snapshots=False))
    assert only_init["step"].unique().tolist() == [0, 3]
    no_init = run_trajectory(planted_run(tmp_path / "b", factors, steps=(1, 2), final=2, init=False))
    assert no_init["step"].unique().tolist() == [1, 2]
    assert no_init[["dA_rel", "phi_A_A0", "dW_dA_ratio"]].isna().all().all()
    assert "no adapter_init" in caplog.text


def test_bad_input_is_a_clear_error(tmp_path):
    from lorascope.peft_format import export_peft

    bare = make_run(tmp_path, "r4-s0", 4, with_init=False)
    with pytest.raises(LorascopeError, match="snapshot_every"):
        run_trajectory(bare)
    peft_dir = tmp_path / "peft"
    export_peft(runs.load_run(make_run(tmp_path, "r4-s1", 4)), peft_dir)
    with pytest.raises(LorascopeError, match="no trajectory|has no\\s+trajectory|trajectory"):
        run_trajectory(peft_dir)
    with_init = make_run(tmp_path, "r4-s2", 4)  # summary.json without "steps", header without "step"
    with pytest.raises(LorascopeError, match="which step"):
        trajectory_plan(runs.load_run(with_init))
    with pytest.raises(LorascopeError, match="k must"):
        trajectory_frame([], {"m": Adapter(torch.ones(1, 2), torch.ones(2, 1), 1.0)}, k=0)
    with pytest.raises(LorascopeError, match="no module"):
        run_trajectory(bare, modules="nothing-matches")
    ad = Adapter(torch.ones(1, 3), torch.ones(2, 1), 1.0)
    with pytest.raises(LorascopeError, match="steps must increase"):
        trajectory_frame([(2, {"m": ad}), (1, {"m": ad})], {"m": ad})
    with pytest.raises(LorascopeError, match="A \\(2, 3\\)"):
        trajectory_frame([(1, {"m": Adapter(torch.ones(2, 3), torch.ones(2, 2), 1.0)})], {"m": ad})


def test_plot_trajectory_draws_every_quantity(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from lorascope.analysis.trajectory_plot import PANELS, plot_trajectory

    def factors(i, t):
        return _random((RANK, N_IN), 10 + i) + 0.01 * t, t * _random((N_OUT, RANK), 20 + i) + t**2 * 0.1

    df = run_trajectory(planted_run(tmp_path, factors, steps=(1, 2, 3), final=3))
    assert set(QUANTITIES) >= {c for cols, _, _ in PANELS for c in cols}
    for spread in ("band", "lines", "none"):
        fig, axes = plot_trajectory(df, spread=spread)
        visible = [ax for ax in axes.flat if ax.get_visible()]
        assert len(visible) == len(PANELS) and all(ax.lines for ax in visible)
        matplotlib.pyplot.close(fig)
    with pytest.raises(LorascopeError, match="spread"):
        plot_trajectory(df, spread="cloud")
    with pytest.raises(LorascopeError, match="not a trajectory"):
        plot_trajectory(df.drop(columns="dW_norm"))
