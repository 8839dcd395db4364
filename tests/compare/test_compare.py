"""The comparison layer: runs in, DataFrames out (pairs, heatmap pages, spectra, sweep listing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from analysis_fixtures import make_run

from lorascope import analysis as la
from lorascope.cli import main
from lorascope.compare import heatmap_pages, run_similarity, spectrum_frames, sweep_table
from lorascope.errors import LorascopeError
from lorascope.run_format import adapter_metadata, save_adapter, write_summary
from lorascope.runs import load_run

# A GQA attention block: q maps 32 -> 32, v maps 32 -> 16 (fewer key/value heads).
GQA = {"model.layers.0.self_attn.q_proj": (32, 32), "model.layers.0.self_attn.v_proj": (16, 32)}


def gqa_run(root, name: str, rank: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m, (out, n_in) in GQA.items():
        tensors[f"{m}.lora_A"] = torch.randn(rank, n_in, generator=g)
        tensors[f"{m}.lora_B"] = torch.randn(out, rank, generator=g)
    meta = adapter_metadata(rank=rank, alpha=8, scaling=8 / rank, base_model="tiny-llama",
                            targets=["q_proj", "v_proj"], init="kaiming", rslora=False)  # fmt: skip
    save_adapter(root / name / "adapter.safetensors", tensors, meta)
    write_summary(root / name, {"status": "complete"})
    return load_run(root / name)


def test_random_floor_uses_each_modules_own_dimension(tmp_path):
    a, b = gqa_run(tmp_path, "r4-s0", 4, 0), gqa_run(tmp_path, "r8-s1", 8, 1)
    q, v = GQA
    pair = run_similarity(a, b, "dW-left")  # output side: n = 32 for q, 16 for v
    summary = pair.summary()
    assert summary.loc[q, "n"] == 32 and summary.loc[v, "n"] == 16
    assert summary.loc[v, "random_floor"] == pytest.approx(np.mean(np.arange(1, 5) / 16))
    assert summary.loc[q, "random_floor"] == pytest.approx(np.mean(np.arange(1, 5) / 32))
    (page,) = heatmap_pages(pair)
    floors = [t for t in page.grids if t.startswith("random Gaussian")]
    assert floors == ["random Gaussian (n=32, 4×8)", "random Gaussian (n=16, 4×8)"]
    v_floor = page.grids["random Gaussian (n=16, 4×8)"].to_numpy()
    np.testing.assert_allclose(v_floor, la.gaussian_phi_baseline((16, 4), (16, 8), n_seeds=5, side="left"))
    # The input side is 32 for both: one floor
    (page,) = heatmap_pages(run_similarity(a, b, "dW-right"))
    assert [t for t in page.grids if t.startswith("random")] == ["random Gaussian (n=32)"]


def test_cli_similarity_writes_a_floor_per_space(tmp_path, capsys):
    gqa_run(tmp_path, "r4-s0", 4, 0)
    gqa_run(tmp_path, "r8-s1", 8, 1)
    out = tmp_path / "out"
    argv = [
        "similarity",
        str(tmp_path / "r4-s0"),
        str(tmp_path / "r8-s1"),
        "--factor",
        "B",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    data = pd.read_csv(out / "phi_B_heatmap.csv")
    assert {"random Gaussian (n=32, 4×8)", "random Gaussian (n=16, 4×8)"} <= set(data.module)
    summary = pd.read_csv(out / "phi_B_summary.csv", index_col="module")
    assert summary.loc[list(GQA)[1], "n"] == 16


def test_heatmap_pages_split_modules_and_keep_every_number(tmp_path):
    a = load_run(make_run(tmp_path, "r4-s0", 4))
    b = load_run(make_run(tmp_path, "r8-s1", 8, seed=1))
    pair = run_similarity(a, b, "A")
    pages = heatmap_pages(pair, per_page=3)
    assert [len([t for t in p.grids if not t.startswith("random")]) for p in pages] == [3, 1]
    modules = pd.concat([p.data for p in pages]).module
    assert set(pair.grids) <= set(modules)
    with pytest.raises(LorascopeError, match="per-page"):
        heatmap_pages(pair, per_page=0)


def test_spectrum_frames_equal_the_library(tmp_path):
    run = load_run(make_run(tmp_path, "r4-s0", 4))
    m = next(iter(run.adapters))
    table, sigmas = spectrum_frames(run, [m])
    ref = la.spectrum(run.adapters[m])
    assert table.loc[m, "energy_rank"] == ref["energy_rank"]
    np.testing.assert_allclose(sigmas.sigma, ref["singular_values"])
    assert list(sigmas.k) == [1, 2, 3, 4]


def test_sweep_table_reports_an_unreadable_run_and_goes_on(tmp_path):
    make_run(tmp_path, "r4-s0", 4)
    make_run(tmp_path, "r8-s0", 8, summary={"status": "failed", "reason": "loss is nan at step 3"})
    bad = make_run(tmp_path, "r16-s0", 16)
    (bad / "summary.json").write_text("{not json")
    table = sweep_table(tmp_path)
    assert list(table.index) == ["r4-s0", "r8-s0", "r16-s0"]
    assert table.loc["r8-s0", "status"] == "failed" and "nan" in table.loc["r8-s0", "reason"]
    assert table.loc["r16-s0", "status"] == "unreadable" and "JSON" in table.loc["r16-s0", "reason"]
    assert table.loc["r4-s0", "val_accuracy"] == 0.9
