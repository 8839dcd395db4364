"""The run directory: exact round trips, atomic summaries, clear errors for what is not a run."""

import json

import pytest
import torch

from lorascope import run_format, runs
from lorascope.errors import LorascopeError


def make_factors(modules, rank=4, n_in=12, n_out=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        out[f"{m}.lora_A"] = torch.randn(rank, n_in, generator=g)
        out[f"{m}.lora_B"] = torch.randn(n_out, rank, generator=g)
    return out


MODULES = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]


def write_run(run_dir, rank=4, seed=0, status="complete"):
    meta = run_format.adapter_metadata(
        rank=rank,
        alpha=16,
        scaling=16 / rank,
        base_model="minilm",
        targets=["query", "value"],
        init="kaiming",
        rslora=False,
        base_fingerprint={m: 1.5 for m in MODULES},
    )
    final = make_factors(MODULES, rank, seed=seed)
    initial = make_factors(MODULES, rank, seed=seed + 100)
    run_format.write_config(run_dir, {"rank": rank, "seed": seed, "lora": {"targets": ["query", "value"]}})
    run_format.save_adapter(run_dir / run_format.INIT_FILE, initial, meta)
    run_format.append_metrics(run_dir, {"step": 1, "loss": 1.25})
    run_format.append_metrics(run_dir, {"step": 2, "loss": 0.5, "eval_accuracy": 0.75})
    run_format.save_adapter(run_dir / run_format.ADAPTER_FILE, final, meta)
    if status:
        run_format.write_summary(run_dir, {"status": status, "eval_accuracy": 0.75})
    return final, initial


def test_save_load_round_trip_is_exact(tmp_path):
    run_dir = tmp_path / "sweep" / "r4-s0"
    final, initial = write_run(run_dir)
    run = runs.load_run(run_dir)
    assert run.name == "r4-s0" and run.rank == 4 and run.status == "complete"
    assert run.base_model == "minilm"
    assert run.meta["targets"] == ["query", "value"]
    assert run.meta["base_fingerprint"] == {m: 1.5 for m in MODULES}
    assert run.config["lora"]["targets"] == ["query", "value"]
    assert run.summary["eval_accuracy"] == 0.75
    assert list(run.adapters) == sorted(MODULES)
    for m in MODULES:
        assert torch.equal(run.adapters[m].A, final[f"{m}.lora_A"])
        assert torch.equal(run.adapters[m].B, final[f"{m}.lora_B"])
        assert torch.equal(run.init[m].A, initial[f"{m}.lora_A"])
        assert run.adapters[m].scaling == 4.0
        dW = run.adapters[m].delta_weight()
        assert dW.shape == (10, 12)
        torch.testing.assert_close(dW, 4.0 * final[f"{m}.lora_B"] @ final[f"{m}.lora_A"])
    assert list(run.metrics["loss"]) == [1.25, 0.5]


def test_checkpoints_are_listed_by_step(tmp_path):
    run_dir = tmp_path / "r4-s0"
    write_run(run_dir)
    meta = run_format.read_adapter(run_dir / run_format.ADAPTER_FILE)[1]
    for step in (100, 20):
        path = run_dir / run_format.CHECKPOINT_DIR / f"step-{step}" / run_format.ADAPTER_FILE
        run_format.save_adapter(path, make_factors(MODULES, seed=step), meta)
    run = runs.load_run(run_dir)
    assert list(run.checkpoints()) == [20, 100]
    snap = run.load_checkpoint(20)
    assert torch.equal(snap[MODULES[0]].A, make_factors(MODULES, seed=20)[f"{MODULES[0]}.lora_A"])
    with pytest.raises(LorascopeError, match="no checkpoint at step 7"):
        run.load_checkpoint(7)


def test_summary_is_written_atomically_and_marks_completion(tmp_path):
    run_dir = tmp_path / "r1-s0"
    write_run(run_dir, rank=1, status=None)
    assert not runs.is_complete(run_dir)
    assert runs.load_run(run_dir).status == "incomplete"
    run_format.write_summary(run_dir, {"status": "complete"})
    assert runs.is_complete(run_dir)
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert json.loads((run_dir / run_format.SUMMARY_FILE).read_text()) == {"status": "complete"}


def test_failed_write_leaves_previous_file_untouched(tmp_path):
    run_dir = tmp_path / "r1-s0"
    run_format.write_summary(run_dir, {"status": "complete"})

    class Boom(Exception):
        pass

    def broken(tmp):
        tmp.write_text('{"status": "comp')  # cut short, as a killed process would leave it
        raise Boom

    with pytest.raises(Boom):
        run_format.atomic_write(run_dir / run_format.SUMMARY_FILE, broken)
    assert run_format.read_summary(run_dir) == {"status": "complete"}
    assert sorted(p.name for p in run_dir.iterdir()) == [run_format.SUMMARY_FILE]


def test_list_runs_orders_by_rank_then_seed(tmp_path):
    for rank, seed in [(64, 0), (8, 1), (8, 0), (1, 0)]:
        write_run(tmp_path / f"r{rank}-s{seed}", rank=rank, seed=seed)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.md").write_text("hi")
    assert [p.name for p in runs.list_runs(tmp_path)] == ["r1-s0", "r8-s0", "r8-s1", "r64-s0"]
    assert runs.parse_run_name("r64-s1") == (64, 1)
    assert runs.parse_run_name("custom") is None


def test_not_a_run_gives_clear_errors(tmp_path):
    with pytest.raises(LorascopeError, match="no such run folder"):
        runs.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LorascopeError, match="not a run"):
        runs.load_run(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LorascopeError, match="is a file"):
        runs.load_run(tmp_path / "file.txt")
    write_run(tmp_path / "sweep" / "r4-s0")
    with pytest.raises(LorascopeError, match="it holds runs"):
        runs.load_run(tmp_path / "sweep")


def test_incomplete_run_without_adapter_says_so(tmp_path):
    run_dir = tmp_path / "r8-s0"
    run_format.write_config(run_dir, {"rank": 8})
    with pytest.raises(LorascopeError, match=r"no adapter.safetensors yet \(status: incomplete\)"):
        runs.load_run(run_dir)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "r4-s0"
    write_run(run_dir)
    path = run_dir / run_format.ADAPTER_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LorascopeError, match="not a readable safetensors file") as e:
        runs.load_run(run_dir)
    assert str(path) in str(e.value)
    path.write_bytes(b"")
    with pytest.raises(LorascopeError, match="not a readable safetensors file"):
        runs.load_run(run_dir)


def test_inconsistent_factors_are_refused(tmp_path):
    meta = run_format.adapter_metadata(
        rank=4, alpha=4, scaling=1.0, base_model="m", targets=["q"], init="kaiming", rslora=False
    )
    bad_shapes = {"q.lora_A": torch.zeros(4, 8), "q.lora_B": torch.zeros(8, 3)}
    with pytest.raises(LorascopeError, match=r"A \(4, 8\) and B \(8, 3\)"):
        run_format.save_adapter(tmp_path / "a.safetensors", bad_shapes, meta)
    missing_b = {"q.lora_A": torch.zeros(4, 8)}
    with pytest.raises(LorascopeError, match="module q has only lora_A"):
        run_format.save_adapter(tmp_path / "a.safetensors", missing_b, meta)
    assert not (tmp_path / "a.safetensors").exists()


def test_foreign_safetensors_file_is_not_an_adapter(tmp_path):
    from safetensors.torch import save_file

    run_dir = tmp_path / "r4-s0"
    run_dir.mkdir()
    save_file(
        {"q.lora_A": torch.zeros(2, 3), "q.lora_B": torch.zeros(3, 2)}, run_dir / run_format.ADAPTER_FILE
    )
    with pytest.raises(LorascopeError, match="not a lorascope adapter file"):
        runs.load_run(run_dir)


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    meta = run_format.adapter_metadata(
        rank=4, alpha=4, scaling=1.0, base_model="m", targets=["q"], init="kaiming", rslora=False
    )
    meta["format_version"] = run_format.FORMAT_VERSION + 1
    run_format.save_adapter(tmp_path / "r4-s0" / run_format.ADAPTER_FILE, make_factors(["q"]), meta)
    with pytest.raises(LorascopeError, match="upgrade lorascope"):
        runs.load_run(tmp_path / "r4-s0")


def test_cut_metrics_line_ends_the_log(tmp_path):
    run_format.append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    with open(tmp_path / run_format.METRICS_FILE, "a") as f:
        f.write('{"step": 2, "lo')
    assert list(run_format.read_metrics(tmp_path)["step"]) == [1]


def test_base_fingerprint_ignores_dtype_and_layout():
    W = torch.randn(6, 5)
    assert run_format.base_fingerprint(W) == pytest.approx(run_format.base_fingerprint(W.T.contiguous()))
    assert run_format.base_fingerprint(W.bfloat16()) == pytest.approx(
        run_format.base_fingerprint(W), rel=1e-2
    )
    assert run_format.base_fingerprint(W) == pytest.approx(torch.linalg.norm(W).item(), rel=1e-6)


def test_peft_folder_counts_as_a_complete_run(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / run_format.PEFT_CONFIG_FILE).write_text("{}")
    assert runs.is_complete(tmp_path / "adapter")
    assert [p.name for p in runs.list_runs(tmp_path)] == ["adapter"]
