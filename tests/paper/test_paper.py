"""The paper's figure recipes on a tiny synthetic sweep: files written, CSV numbers equal the library's."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lorascope import analysis as la
from lorascope import run_format, runs
from lorascope.analysis.stats import N_NULL
from lorascope.cli import main as cli_main
from lorascope.lora import add_lora, factors
from lorascope.paper.recipes import make_figures
from lorascope.paper.sweep import Sweep

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["query", "value"]
MIDDLE = "bert.encoder.layer.1.attention.self.{}"


def _planted(rank: int, n: int, shared: torch.Tensor, seed: int) -> torch.Tensor:
    """A learned update whose top right singular direction is `shared`, the rest random and weaker."""
    g = torch.Generator().manual_seed(1000 + seed * 100 + rank)
    rest = 0.05 * torch.randn(rank, n, generator=g)
    rest[0] += 3.0 * shared
    return rest


def write_run(sweep: Path, base: Path, rank: int, seed: int, shared: torch.Tensor, task: str = "toy") -> Path:
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(base)
    torch.manual_seed(seed * 7919 + rank)
    wrapped = add_lora(model, TARGETS, rank=rank, alpha=8, init="gaussian", trainable=["classifier"])
    initial = factors(wrapped)
    g = torch.Generator().manual_seed(seed * 31 + rank)
    with torch.no_grad():
        for layer in wrapped.values():
            layer.A.add_(_planted(rank, layer.in_features, shared, seed))
            layer.B.copy_(0.1 * torch.randn(layer.B.shape, generator=g))
    meta = run_format.adapter_metadata(
        rank=rank,
        alpha=8,
        scaling=8 / rank,
        base_model=str(base),
        targets=TARGETS,
        init="gaussian",
        rslora=False,
        base_fingerprint={n: run_format.base_fingerprint(m.base_weight()) for n, m in wrapped.items()},
        model_class="AutoModelForSequenceClassification",
        num_labels=3,
        seed=seed,
        task=task,
    )
    run_dir = sweep / f"r{rank}-s{seed}"
    run_format.write_config(run_dir, {"rank": rank, "seed": seed})
    run_format.save_adapter(run_dir / run_format.INIT_FILE, initial, meta)
    final = factors(wrapped)
    run_format.save_adapter(run_dir / run_format.ADAPTER_FILE, final, {**meta, "step": 2})
    if rank == 4:  # one snapshot half way, for the trajectory recipe
        half = {k: (initial[k] + v) / 2 for k, v in final.items()}
        run_format.save_adapter(
            run_format.snapshot_dir(run_dir, 1) / run_format.ADAPTER_FILE, half, {**meta, "step": 1}
        )
    summary = {"status": "complete", "val_accuracy": 0.5 + rank / 100, "update_params": rank * 4 * 64}
    run_format.write_summary(
        run_dir, {**summary, "steps": 2, "wall_time_s": 1.5 * rank, "initial_eval": {"val_accuracy": 0.3}}
    )
    return run_dir


def write_full_run(sweep: Path, base: Path, shared: torch.Tensor) -> Path:
    """A full fine-tuning run: per target a dense ΔW whose top input direction is `shared`."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(base)
    g = torch.Generator().manual_seed(77)
    deltas, fingerprint = {}, {}
    for name, module in model.named_modules():
        if name.endswith(tuple(TARGETS)):
            out = torch.randn(module.weight.shape[0], generator=g)
            deltas[name] = 2.0 * torch.outer(out / out.norm(), shared) + 0.02 * torch.randn(
                module.weight.shape, generator=g
            )
            fingerprint[name] = run_format.base_fingerprint(module.weight)
    meta = run_format.adapter_metadata(
        rank=None, alpha=None, scaling=None, base_model=str(base), targets=TARGETS, init=None, rslora=None,
        base_fingerprint=fingerprint, method="full", model_class="AutoModelForSequenceClassification",
        num_labels=3, seed=0, step=2,
    )  # fmt: skip
    run_dir = sweep / "full-s0"
    run_format.write_config(run_dir, {"method": "full", "rank": None, "seed": 0})
    run_format.save_delta(run_dir / run_format.DELTA_FILE, deltas, meta)
    run_format.write_summary(
        run_dir, {"status": "complete", "method": "full", "val_accuracy": 0.6, "steps": 2}
    )
    return run_dir


@pytest.fixture(scope="module")
def sweep(tiny_bert, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "tiny-bert-toy"
    shared = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(5)), dim=0)
    for rank, seed in [(1, 0), (4, 0), (8, 0), (8, 1)]:
        write_run(path, tiny_bert, rank, seed, shared)
    write_full_run(path, tiny_bert, shared)
    other = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(6)), dim=0)
    write_run(path.parent / "tiny-bert-other", tiny_bert, 8, 0, other, task="other")  # a second task
    return path


@pytest.fixture(scope="module")
def figures(sweep, tmp_path_factory) -> tuple[Path, list[Path], list]:
    out = tmp_path_factory.mktemp("figures")
    written, skipped = make_figures(sweep, out, formats=("png", "pdf"))
    return out, written, skipped


def test_every_recipe_writes_its_files(figures):
    out, written, skipped = figures
    assert skipped == []
    names = {p.name for p in written}
    for factor in ("A", "dA", "dW-right"):
        for fig in ("fig3_rank_similarity", "fig4_seed_similarity", "fig6_layers_rank_similarity"):
            assert {f"{fig}_{factor}.png", f"{fig}_{factor}.pdf", f"{fig}_{factor}.csv"} <= names
        assert f"fig7_layers_seed_similarity_{factor}.csv" in names
    assert {"fig8_w_vs_delta.png", "fig8_w_vs_delta.csv", "findings.md"} <= names
    assert {
        "fig_spectrum.png",
        "fig_lora_vs_full.png",
        "fig_lora_vs_full.csv",
        "trajectory_r4-s0.csv",
    } <= names
    for table in ("table7_amplification", "table_ranks", "table_energy_rank"):
        assert {f"{table}.csv", f"{table}.md", f"{table}.tex"} <= names
    for p in written:
        assert p.is_file() and p.stat().st_size > 0
    assert (out / "fig3_rank_similarity_A.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\\toprule" in (out / "table7_amplification.tex").read_text()


def test_fig3_csv_equals_the_library(figures, sweep):
    out, _, _ = figures
    data = pd.read_csv(out / "fig3_rank_similarity_A.csv")
    assert set(data["r_small"]) == {4} and set(data["r_large"]) == {8}  # 8 is the largest; 4 below it
    small, large = runs.load_run(sweep / "r4-s0"), runs.load_run(sweep / "r8-s0")
    m = MIDDLE.format("query")
    expected = la.subspace_similarity(small.adapters[m].A, large.adapters[m].A)
    got = data[data["module"] == "attention.self.query"].pivot(index="i", columns="j", values="phi")
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-9)
    # A − A0: the planted direction alone
    learned = pd.read_csv(out / "fig3_rank_similarity_dA.csv")
    got = learned[learned["module"] == "attention.self.query"].pivot(index="i", columns="j", values="phi")
    expected = la.learned_a_similarity(
        small.adapters[m].A, small.init[m].A, large.adapters[m].A, large.init[m].A
    )
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-9)
    assert got.to_numpy()[0, 0] > 0.95  # the planted shared top direction is found


def test_fig4_csv_equals_the_library_and_has_the_gaussian_panel(figures, sweep):
    out, _, _ = figures
    data = pd.read_csv(out / "fig4_seed_similarity_dW-right.csv")
    a, b = runs.load_run(sweep / "r8-s0"), runs.load_run(sweep / "r8-s1")
    m = MIDDLE.format("value")
    expected = la.delta_similarity(a.adapters[m], b.adapters[m])
    got = data[data["module"] == "attention.self.value"].pivot(index="i", columns="j", values="phi")
    # The figure's φ of ΔW comes from r × r Gram matrices in float32 (the factors' own precision; float64
    # where ill-conditioned), the library's reference from float64 QRs: equal to 1e-6.
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-6)
    gauss = data[data["pair"] == "gaussian"].pivot(index="i", columns="j", values="phi")
    shape = (8, 32)  # two Gaussian matrices shaped like A of r = 8 on hidden size 32, input side
    # the panel is the null's mean over N_NULL draws (one draw of it varies by several sd)
    expected = la.gaussian_phi_samples(shape, shape, n_seeds=N_NULL, seed=0, side="right").mean(axis=0)
    np.testing.assert_allclose(gauss.to_numpy(), expected, atol=1e-12)


def test_fig6_covers_every_layer_and_kind(figures):
    out, _, _ = figures
    data = pd.read_csv(out / "fig6_layers_rank_similarity_A.csv")
    assert set(zip(data["layer"], data["module"], strict=True)) == {
        (layer, f"attention.self.{k}") for layer in (0, 1) for k in TARGETS
    }


def test_fig8_and_table7_equal_the_library(figures, sweep, tiny_bert):
    from transformers import BertForSequenceClassification

    out, _, _ = figures
    m = MIDDLE.format("query")
    W = BertForSequenceClassification.from_pretrained(tiny_bert).get_submodule(m).weight.detach()
    run = runs.load_run(sweep / "r4-s0")
    a = run.adapters[m]
    fig8 = pd.read_csv(out / "fig8_w_vs_delta.csv")
    at = fig8[(fig8["module"] == "attention.self.query") & (fig8["delta"] == "r=4")]
    # Both sides (the paper does not say which one its figure shows), each labelled in the CSV.
    assert set(fig8["side"]) == {"left", "right"}
    got, got_right = (
        at[at.side == s].pivot(index="i", columns="j", values="phi").to_numpy() for s in ("left", "right")
    )
    np.testing.assert_allclose(got, la.w_delta_similarity(W, a, side="left"), atol=1e-9)
    right = la.w_delta_similarity(W, a, side="right")
    np.testing.assert_allclose(got_right, right, atol=1e-9)
    assert np.abs(got - right).max() > 1e-3  # the sides differ here, so the checks above can fail
    t7 = pd.read_csv(out / "table7_amplification.csv")
    row = t7[(t7["module"] == "query") & (t7["r"] == 4)].iloc[0]
    numbers = la.amplification(W, a)
    assert row["‖UᵀWV‖_F ΔW"] == pytest.approx(numbers["proj_dw"], rel=1e-6)
    assert row["‖UᵀWV‖_F W"] == pytest.approx(numbers["proj_w"], rel=1e-6)
    assert row["amplification"] == pytest.approx(numbers["amplification"], rel=1e-6)
    assert sorted(set(t7["r"])) == [1, 4, 8]
    # the random row is a null distribution of N_NULL Haar draws: its mean, sd and ΔW's percentile
    from lorascope.analysis.nulls import random_projection_draws

    draws = random_projection_draws(W, 4, N_NULL, seed=4)
    assert row["‖UᵀWV‖_F random (null mean)"] == pytest.approx(draws.mean(), rel=1e-9)
    assert row["random sd"] == pytest.approx(draws.std(ddof=1), rel=1e-9)
    below = 100 * np.mean(draws < numbers["proj_dw"])
    assert row["ΔW's percentile in random"] == pytest.approx(below, abs=100 / N_NULL)


def test_rank_table_reads_the_summaries(figures):
    out, _, _ = figures
    table = pd.read_csv(out / "table_ranks.csv")
    pairs = [("1", 0), ("4", 0), ("8", 0), ("8", 1), ("full", 0)]  # the full run after the LoRA ranks
    assert list(zip(table["r"].astype(str), table["seed"], strict=True)) == pairs
    assert list(table["accuracy"]) == pytest.approx([0.51, 0.54, 0.58, 0.58, 0.6])
    assert list(table["accuracy at step 0"][:4]) == pytest.approx([0.3] * 4)


def test_findings_report_the_planted_overlap(figures):
    out, _, _ = figures
    text = (out / "findings.md").read_text()
    fig3 = text.split("## Fig. 3")[1].split("## Fig. 4")[0]
    row = next(line for line in fig3.splitlines() if line.startswith("| A − A0 | query |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # the ranks share one seed: the number is reported, the verdict is not drawn from it
    assert float(cells[2].split()[0]) > 0.95 and cells[-1] == "one seed: no interval"
    assert "random Gaussian" in text.split("## Fig. 4")[1]
    control = text.split("## Initialisation control")[1].split("## Fig. 3")[0]
    rows = [line for line in control.splitlines() if line.startswith("| Fig. ")]
    # every module the Fig. 3 and Fig. 4 sections read, with its A0 control against the floor
    assert len(rows) == 4 and all(line.rstrip(" |").endswith(("no", "**yes**")) for line in rows)
    assert "## Table 7" in text and "amplification at r = 1" in text


def test_missing_second_seed_skips_fig4_with_the_command(sweep, tmp_path):
    one_seed = tmp_path / "one-seed"
    shutil.copytree(sweep, one_seed, ignore=shutil.ignore_patterns("r8-s1"))
    written, skipped = make_figures(
        one_seed, tmp_path / "out", formats=("png",), recipes=["fig4", "findings"]
    )
    assert {s.recipe for s in skipped} == {f"fig4_seed_similarity_{f}" for f in ("A", "dA", "dW-right")}
    assert all("python sweep.py rank=8 seed=1" in s.reason for s in skipped)
    text = (tmp_path / "out" / "findings.md").read_text()
    assert "Not testable: needs a second seed at rank 8: run `python sweep.py rank=8 seed=1`" in text


def test_unloadable_base_model_skips_only_what_needs_w(sweep, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(sweep, moved)
    for run_dir in runs.list_runs(moved):
        path = run_dir / runs.load_run(run_dir).update_file
        tensors, meta = run_format.read_tensors(path)
        run_format.save_tensors(path, tensors, {**meta, "base_model": str(tmp_path / "gone")})
    written, skipped = make_figures(
        moved, tmp_path / "out", formats=("png",), recipes=["fig3", "fig8", "table7"]
    )
    assert {s.recipe for s in skipped} == {"fig8", "table7"}
    assert all("needs the base weights W" in s.reason for s in skipped)
    assert any(p.name == "fig3_rank_similarity_A.png" for p in written)


def test_incomplete_runs_are_left_out(sweep, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    (partial / "r4-s0" / run_format.SUMMARY_FILE).unlink()
    loaded = Sweep.load(partial)
    assert sorted(loaded.runs) == [(1, 0), (8, 0), (8, 1)]
    assert loaded.skipped == {"r4-s0": "status incomplete"}


def test_a_recipe_runs_alone(sweep, tmp_path):
    """`lorascope figures SWEEP --only NAME` runs one recipe, and writes only what it makes."""
    argv = [sys.executable, "-m", "lorascope", "figures"]
    res = subprocess.run(
        [*argv, str(sweep), "--only", "table7", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "table7_amplification.md").is_file()
    assert not any(p.name.startswith(("fig", "table_ranks")) for p in tmp_path.iterdir())
    bad = subprocess.run([*argv, str(tmp_path / "nope"), "--only", "table7"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no such sweep folder" in bad.stderr


def test_cli_figures(sweep, tmp_path, capsys):
    assert (
        cli_main(["figures", str(sweep), "--out", str(tmp_path), "--only", "fig3,ranks", "--factor", "A"])
        == 0
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "fig3_rank_similarity_A.png",
        "fig3_rank_similarity_A.pdf",
        "fig3_rank_similarity_A.csv",
        "table_ranks.csv",
        "table_ranks.md",
        "table_ranks.tex",
        "report.html",  # all of the above in one page (lorascope.report)
    }
    assert cli_main(["figures", str(sweep), "--only", "fig99"]) == 2
    assert "unknown recipe(s) fig99" in capsys.readouterr().err


def test_a_run_trained_on_another_base_is_refused(sweep, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep, mixed)
    adapter, meta = run_format.read_adapter(mixed / "r8-s1" / run_format.ADAPTER_FILE)
    tensors = {f"{m}.lora_{p}": getattr(a, p) for m, a in adapter.items() for p in "AB"}
    wrong = {m: 2 * v for m, v in meta["base_fingerprint"].items()}
    run_format.save_adapter(
        mixed / "r8-s1" / run_format.ADAPTER_FILE, tensors, {**meta, "base_fingerprint": wrong}
    )
    _, skipped = make_figures(mixed, tmp_path / "out", formats=("png",), recipes=["table7"])
    assert [s.recipe for s in skipped] == ["run r8-s1"]
    assert "trained on another base than r1-s0" in skipped[0].reason


def test_lora_versus_full_equals_the_library(figures, sweep):
    out, _, _ = figures
    data = pd.read_csv(out / "fig_lora_vs_full.csv")
    full = runs.load_run(sweep / "full-s0")
    grids = []  # φ(8, j), j < n = 32, of r8-s0 and r8-s1 against full-s0 (the only full seed), both layers
    for seed in (0, 1):
        lora = runs.load_run(sweep / f"r8-s{seed}")
        for layer in (0, 1):
            m = f"bert.encoder.layer.{layer}.attention.self.value"
            V = torch.linalg.svd(full.adapters[m].delta.double(), full_matrices=False)[2][:31].T
            grids.append(la.phi_grid(la.delta_svd(lora.adapters[m].A, lora.adapters[m].B)[2], V)[-1])
    got = data[(data.kind == "value") & (data.side == "input") & (data["rank"] == 8)]
    np.testing.assert_allclose(got.phi.to_numpy(), np.mean(grids, axis=0), atol=1e-8)  # over seeds, layers
    assert (got.seeds == 2).all() and (got.lo <= got.phi_normalised).all()
    assert got[got.j == 1].phi.iloc[0] > 0.5  # full's top direction lies in LoRA's top-8 (floor 8/32)
    energy = pd.read_csv(out / "table_energy_rank.csv")
    ranks = {
        m: la.spectrum_metrics(torch.linalg.svdvals(full.adapters[m].delta.double()).numpy())["energy_rank"]
        for m in full.adapters
        if m.endswith("query")
    }
    row = energy[(energy.method == "full") & (energy.kind == "query")].iloc[0]
    assert row.energy_rank == pytest.approx(np.mean(list(ranks.values())))  # one seed; mean over layers


def test_findings_speak_of_full_fine_tuning_and_the_trajectory(figures):
    out, _, _ = figures
    text = (out / "findings.md").read_text()
    assert "## LoRA versus full fine-tuning: how low-rank is ΔW?" in text
    found = text.split("does a low-rank adapter find")[1].split("##")[0]
    assert "| value | input | 8 |" in found and "LoRA's top direction is full fine-tuning's:" in found
    trajectory = text.split("## How the adapters formed during training")[1]
    assert "| r4-s0 | query |" in trajectory


def test_cross_task_figure_compares_tasks_beside_seeds(figures, sweep):
    out, _, _ = figures
    data = pd.read_csv(out / "fig_cross_task_dA.csv")
    assert set(data.pair) == {"toy vs other", "toy: seed 0 vs 1", "random gaussian"}
    m = MIDDLE.format("query")
    a, b = runs.load_run(sweep / "r8-s0"), runs.load_run(sweep.parent / "tiny-bert-other" / "r8-s0")
    expected = la.learned_a_similarity(a.adapters[m].A, a.init[m].A, b.adapters[m].A, b.init[m].A)
    got = data[(data.module == "attention.self.query") & (data.pair == "toy vs other")]
    np.testing.assert_allclose(
        got.pivot(index="i", columns="j", values="phi").to_numpy(), expected, atol=1e-9
    )
    # the planted directions differ between the tasks and agree between the seeds
    seeds = data[(data.module == "attention.self.query") & (data.pair == "toy: seed 0 vs 1")]
    assert (
        seeds[(seeds.i == 1) & (seeds.j == 1)].phi.iloc[0]
        > 0.9
        > got[(got.i == 1) & (got.j == 1)].phi.iloc[0]
    )
    text = (out / "findings.md").read_text()
    assert "## Adapters of two tasks on one model" in text and "| A − A0 | query |" in text


def test_intruder_counts_equal_the_library(figures, sweep, tiny_bert):
    from transformers import BertForSequenceClassification

    out, _, _ = figures
    table = pd.read_csv(out / "table_intruders_all_modules.csv")
    base = BertForSequenceClassification.from_pretrained(tiny_bert)
    for label, run_dir in (("r=8", "r8-s0"), ("full", "full-s0")):
        run = runs.load_run(sweep / run_dir)
        m = MIDDLE.format("value")
        W = base.get_submodule(m).weight.detach()
        ref = la.intruder_dimensions(W, run.adapters[m], k=10, eps=0.5)
        row = table[(table.run == label) & (table.module == m)].iloc[0]
        assert row["count"] == ref["count"]
    assert "## LoRA versus full fine-tuning: intruder dimensions" in (out / "findings.md").read_text()
