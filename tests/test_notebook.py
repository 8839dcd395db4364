"""docs/notebooks/explore.ipynb runs top to bottom (nbclient) on a smoke sweep trained here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import sweep_cmd

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "notebooks" / "explore.ipynb"


@pytest.mark.slow
def test_the_explore_notebook_runs_on_a_smoke_sweep(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = sweep_cmd("experiment=smoke", "rank=2,4", f"runs_dir={runs_dir}", "train.threads=1")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # The kernel inherits this environment: the sweep, and the checkout first on the path.
    monkeypatch.setenv("LORASCOPE_SWEEP", str(runs_dir / "smoke-minilm-bbc"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", cwd=str(tmp_path)).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # φ heatmaps, the spectrum, the adapter map: inline
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("amplification" in t for t in tables) and any("phi_11" in t for t in tables)
