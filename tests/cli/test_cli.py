"""The `lorascope` commands end to end on runs saved with run_format.save_adapter (synthetic factors)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from analysis_fixtures import MODULES, make_run, shared_directions

from lorascope import analysis as la
from lorascope.cli import main
from lorascope.runs import load_run


@pytest.fixture
def sweep(tmp_path):
    shared = shared_directions(32, 2)
    make_run(tmp_path / "sweep", "r4-s0", 4, shared=shared, seed=0)
    make_run(tmp_path / "sweep", "r8-s1", 8, shared=shared, seed=1)
    return tmp_path / "sweep"


def _error(capsys, argv):
    """Run main(argv) expecting a user error: exit 2 and exactly one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorascope: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "command",
    [[], ["ls"], ["similarity"], ["amplification"], ["intruders"], ["spectrum"], ["trajectory"], ["compare"],
     ["figures"], ["export"]],
)  # fmt: skip
def test_help_explains_every_command(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lorascope") and len(out.splitlines()) > 5


def test_similarity_writes_heatmap_and_csv_equal_to_library(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["similarity", str(sweep / "r4-s0"), str(sweep / "r8-s1"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(m in printed for m in MODULES) and "random_floor" in printed and str(out) in printed
    png = out / "phi_A_heatmap.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and (out / "phi_A_heatmap.csv").is_file()
    long = pd.read_csv(out / "phi_A.csv")
    assert list(long.columns) == ["module", "i", "j", "phi"] and len(long) == len(MODULES) * 4 * 8
    a, b = load_run(sweep / "r4-s0"), load_run(sweep / "r8-s1")
    for m in MODULES:
        got = long[long.module == m].pivot(index="i", columns="j", values="phi").to_numpy()
        np.testing.assert_allclose(got, la.subspace_similarity(a.adapters[m].A, b.adapters[m].A), atol=1e-9)
    figure_data = pd.read_csv(out / "phi_A_heatmap.csv")
    assert set(figure_data.module) == {*MODULES, "random Gaussian (n=32)"}
    floor = figure_data[figure_data.module == "random Gaussian (n=32)"]
    np.testing.assert_allclose(
        floor.pivot(index="i", columns="j", values="phi").to_numpy(),
        la.gaussian_phi_baseline((4, 32), (8, 32), n_seeds=5),
        atol=1e-9,
    )
    summary = pd.read_csv(out / "phi_A_summary.csv", index_col="module")
    assert summary.loc[MODULES[0], "phi_11"] == pytest.approx(long.phi.iloc[0], abs=1e-9)


def test_similarity_default_out_factor_and_filters(sweep, capsys):
    argv = ["similarity", str(sweep / "r4-s0"), str(sweep / "r8-s1"), "--factor", "dW-left"]
    assert main([*argv, "--modules", "value", "--layers", "1", "--format", "png,pdf"]) == 0
    out = sweep / "analysis" / "r4-s0_vs_r8-s1"
    assert (out / "phi_dW-left_heatmap.pdf").is_file()
    long = pd.read_csv(out / "phi_dW-left.csv")
    m = "encoder.layer.1.attention.self.value"
    assert set(long.module) == {m}
    a, b = load_run(sweep / "r4-s0").adapters[m], load_run(sweep / "r8-s1").adapters[m]
    want = la.delta_similarity(a, b, side="left")
    got = long.pivot(index="i", columns="j", values="phi").to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert str(out) in capsys.readouterr().out


def test_user_errors_are_one_line_with_exit_code_2(sweep, tmp_path, capsys):
    good = str(sweep / "r4-s0")
    assert "no such run folder" in _error(capsys, ["similarity", str(tmp_path / "missing"), good])
    (tmp_path / "empty").mkdir()
    assert "not a run" in _error(capsys, ["spectrum", str(tmp_path / "empty")])
    broken = make_run(tmp_path, "r4-s9", 4)
    data = (broken / "adapter.safetensors").read_bytes()
    (broken / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    assert "safetensors" in _error(capsys, ["similarity", good, str(broken)])
    other = make_run(tmp_path, "r4-s7", 4, modules=["model.layers.0.self_attn.q_proj"])
    assert "share no module" in _error(capsys, ["similarity", good, str(other)])
    assert "regex" in _error(capsys, ["spectrum", good, "--modules", "("])
    assert "--format" in _error(capsys, ["spectrum", good, "--format", "gif"])
    assert "no such sweep" in _error(capsys, ["ls", str(tmp_path / "nope")])


def test_error_via_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lorascope.cli", "spectrum", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lorascope: error: {tmp_path / 'missing'}: no such run folder"
    ]


def test_spectrum_table_and_figure(sweep, tmp_path, capsys):
    out = tmp_path / "spec"
    assert main(["spectrum", str(sweep / "r8-s1"), "--out", str(out)]) == 0
    assert "effective_rank" in capsys.readouterr().out
    table = pd.read_csv(out / "spectrum.csv", index_col="module")
    ad = load_run(sweep / "r8-s1").adapters[MODULES[2]]
    ref = la.spectrum(ad)
    assert table.loc[MODULES[2], "stable_rank"] == pytest.approx(ref["stable_rank"])
    assert table.loc[MODULES[2], "energy_rank"] == ref["energy_rank"]
    long = pd.read_csv(out / "spectrum_plot.csv")
    np.testing.assert_allclose(long[long.module == MODULES[2]].sigma, ref["singular_values"], rtol=1e-9)
    assert (out / "spectrum_plot.png").is_file() and (out / "spectrum.tex").is_file()


def test_ls_reads_summaries(sweep, capsys):
    make_run(sweep, "r16-s0", 16, summary={"status": "running"})
    assert main(["ls", str(sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["r4-s0", "r8-s1", "r16-s0"]
    assert "val_accuracy" in lines[0] and "wall_time" in lines[0]
    assert "complete" in lines[2] and "12.5s" in lines[2] and "running" in lines[4]


def _with_base(run_dir, base: Path) -> None:
    """Point a synthetic run at a base checkpoint folder (its header's base_model)."""
    from lorascope import run_format

    tensors, meta = run_format.read_tensors(run_dir / "adapter.safetensors")
    run_format.save_tensors(run_dir / "adapter.safetensors", tensors, {**meta, "base_model": str(base)})


def test_amplification_and_intruders_read_w_from_the_base_checkpoint(sweep, tmp_path, capsys):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    weights = {m: torch.randn(24, 32, generator=g) for m in MODULES}
    base = tmp_path / "base"
    base.mkdir()
    save_file({f"{m}.weight": W for m, W in weights.items()}, str(base / "model.safetensors"))
    _with_base(sweep / "r4-s0", base)
    out = tmp_path / "amp"
    assert main(["amplification", str(sweep / "r4-s0"), "--k", "2", "--out", str(out)]) == 0
    assert "amplification" in capsys.readouterr().out
    table = pd.read_csv(out / "amplification.csv", index_col="module")
    ad = load_run(sweep / "r4-s0").adapters[MODULES[1]]
    ref = la.amplification(weights[MODULES[1]], ad, k=2)
    for key in ("w_norm", "dw_norm", "proj_dw", "proj_w", "proj_random", "amplification"):
        assert table.loc[MODULES[1], key] == pytest.approx(ref[key], rel=1e-8)
    assert (out / "amplification.md").is_file() and (out / "amplification.tex").is_file()
    assert main(["intruders", str(sweep / "r4-s0"), "--k", "3", "--out", str(out)]) == 0
    intruders = pd.read_csv(out / "intruders.csv", index_col="module")
    ref = la.intruder_dimensions(weights[MODULES[2]], load_run(sweep / "r4-s0").adapters[MODULES[2]], k=3)
    assert intruders.loc[MODULES[2], "count"] == ref["count"]
    curve = pd.read_csv(out / "intruders_eps.csv")
    assert set(curve.module) == set(MODULES) and (out / "intruders_eps.png").is_file()
    # an uncached hub id: one line, no download, no retries
    _with_base(sweep / "r4-s0", "nobody/no-such-model")
    err = _error(capsys, ["amplification", str(sweep / "r4-s0")])
    assert "not in the Hugging Face cache" in err


def _poison(run_dir, value=float("nan")):
    """Rewrite a run's adapter with one entry of one factor set to `value`, as a diverged run leaves it."""
    from lorascope import run_format

    adapters, meta = run_format.read_tensors(run_dir / "adapter.safetensors")
    adapters[f"{MODULES[1]}.lora_B"][0, 0] = value
    run_format.save_tensors(run_dir / "adapter.safetensors", adapters, meta)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_adapter_is_refused_by_every_command(sweep, tmp_path, capsys, value):
    _poison(sweep / "r8-s1", value)
    good, bad = str(sweep / "r4-s0"), str(sweep / "r8-s1")
    for argv in (
        ["similarity", good, bad],
        ["spectrum", bad],
        ["amplification", bad],
        ["export", bad, str(tmp_path / "peft")],
    ):
        assert "non-finite values" in _error(capsys, argv), argv
    assert not (tmp_path / "peft").exists()


def test_figures_and_ls_report_a_bad_run_and_go_on(sweep, tmp_path, capsys):
    make_run(sweep, "r16-s0", 16, seed=2)
    _poison(sweep / "r16-s0")
    assert main(["ls", str(sweep)]) == 0
    listing = capsys.readouterr().out
    assert "r16-s0" in listing and "r4-s0" in listing
    figs = tmp_path / "figs"
    assert main(["figures", str(sweep), "--out", str(figs), "--only", "fig3", "--factor", "A"]) == 0
    out = capsys.readouterr().out
    assert "run r16-s0: skipped:" in out and "non-finite" in out
    assert (figs / "fig3_rank_similarity_A.png").is_file()  # from the two good runs


def test_failed_and_incomplete_runs_are_refused_unless_asked(sweep, tmp_path, capsys):
    failed = make_run(tmp_path, "r4-s5", 4, summary={"status": "failed", "reason": "loss is nan at step 3"})
    assert "the run failed (loss is nan at step 3)" in _error(capsys, ["spectrum", str(failed)])
    killed = make_run(tmp_path, "r4-s6", 4)
    (killed / "summary.json").unlink()  # killed between its adapter and its summary
    assert "--allow-incomplete" in _error(capsys, ["spectrum", str(killed)])
    assert main(["spectrum", str(killed), "--allow-incomplete", "--out", str(tmp_path / "o")]) == 0
    assert "--allow-incomplete" in _error(capsys, ["similarity", str(sweep / "r4-s0"), str(killed)])
    # a failed run is never analysed, whatever the flags (its refusal suggests none)
    for argv in (["spectrum", str(failed)], ["compare", str(sweep / "r4-s0"), str(failed)]):
        err = _error(capsys, [*argv, "--allow-incomplete"])
        assert "the run failed" in err and "--allow-incomplete" not in err, argv


def test_layer_ranges_are_cut_to_the_model(sweep, tmp_path, capsys):
    argv = ["spectrum", str(sweep / "r4-s0"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--layers", "0-999999999"]) == 0  # every layer, and nothing a billion long
    table = pd.read_csv(tmp_path / "o" / "spectrum.csv")
    assert set(table.module) == set(MODULES)
    capsys.readouterr()
    assert "no layer 7" in _error(capsys, [*argv, "--layers", "7"])
    assert "none of the model's layers" in _error(capsys, [*argv, "--layers", "5-9"])


def test_compare_writes_a_symmetric_map_and_refuses_bad_input(sweep, tmp_path, capsys):
    make_run(sweep, "r8-s2", 8, seed=2)
    out = tmp_path / "map"
    assert main(["compare", str(sweep), "--out", str(out), "--k", "4"]) == 0
    assert "random floor" in capsys.readouterr().out
    matrix = pd.read_csv(out / "map_dW-right_matrix.csv", index_col=0)
    assert list(matrix.index) == list(matrix.columns) == ["r4-s0", "r8-s1", "r8-s2"]
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T, atol=1e-12)
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), 1.0, atol=1e-6)
    assert (out / "map_dW-right.png").is_file() and (out / "map_dW-right_by_kind.csv").is_file()
    assert "at least 2" in _error(capsys, ["compare", str(sweep / "r4-s0")])
    other = make_run(tmp_path, "r4-s7", 4, modules=["model.layers.0.self_attn.q_proj"])
    assert "shares no module" in _error(capsys, ["compare", str(sweep / "r4-s0"), str(other)])
    elsewhere = make_run(tmp_path, "r4-s8", 4, seed=3)
    _with_base(elsewhere, tmp_path / "another-base")  # the synthetic runs say base_model "synthetic"
    assert "base" in _error(capsys, ["compare", str(sweep / "r4-s0"), str(elsewhere)])


def test_trajectory_of_a_run_without_snapshots_or_init_is_refused(tmp_path, capsys):
    bare = make_run(tmp_path, "r4-s0", 4, with_init=False)
    assert "snapshot_every" in _error(capsys, ["trajectory", str(bare)])
