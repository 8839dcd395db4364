"""A sweep job never raises: a damaged run folder or a runs_dir that cannot hold runs is one line."""

from __future__ import annotations

import os
import subprocess

from conftest import sweep_cmd, tiny_config, tiny_overrides

from lorascope import run_format
from lorascope.launch import launch


def test_a_complete_run_whose_summary_is_damaged_is_redone(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    cfg = tiny_config(tiny_bert, topic_jsonl, steps=2)
    assert launch(cfg, out)["status"] == "complete"
    for damage in (b"\xff\xfe not UTF-8", b"[1, 2]"):
        (out / run_format.SUMMARY_FILE).write_bytes(damage)
        assert launch(cfg, out)["status"] == "complete"  # not trusted as complete: trained again
    (out / run_format.CONFIG_FILE).write_bytes(b"- a\n- list\n")
    failed = launch(cfg, out)
    assert failed["status"] == "failed" and "config.yaml" in failed["reason"]


def test_a_runs_dir_that_is_a_file_is_one_line(tiny_bert, topic_jsonl, tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.write_text("not a folder")
    proc = subprocess.run(
        sweep_cmd("rank=1", *tiny_overrides(tiny_bert, topic_jsonl, runs_dir)), cwd=tmp_path,
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"lorascope: error: runs_dir={runs_dir}: cannot hold the sweep folder (Not a directory)"
    ]


def test_training_refuses_a_base_with_pickle_weights_only(tiny_bert, topic_jsonl, tmp_path):
    import shutil

    import torch

    base = tmp_path / "pickled"
    shutil.copytree(tiny_bert, base)
    from safetensors.torch import load_file

    torch.save(load_file(str(base / "model.safetensors")), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    cfg = tiny_config(base, topic_jsonl, steps=2)
    failed = launch(cfg, tmp_path / "r2-s0")
    assert failed["status"] == "failed" and "pickle weights" in failed["reason"]
    assert "save_pretrained" in failed["reason"]  # the line that converts them
