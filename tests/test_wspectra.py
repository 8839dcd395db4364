"""The on-disk cache of W's spectral data: keyed by content, reused, atomic, and never trusted blindly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lorascope import run_format, wspectra
from lorascope.analysis import truncated

ROOT = Path(__file__).resolve().parents[1]


def _W(out=40, n_in=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, n_in, generator=g)


def test_the_key_is_the_content_not_the_object():
    W = _W()
    assert wspectra.weight_key(W) == wspectra.weight_key(W.clone())
    changed = W.clone()
    changed[3, 4] += 1e-3
    assert wspectra.weight_key(changed) != wspectra.weight_key(W)
    assert wspectra.weight_key(W.T.contiguous()) != wspectra.weight_key(W)  # (out, in) matters


def test_a_second_request_reads_the_cache_and_a_larger_k_serves_a_smaller(tmp_path):
    cache = wspectra.SpectraCache(tmp_path)
    W = _W()
    before = truncated.SVD_CALLS.copy()
    U, S, V = cache.entry(W).top(8)
    assert truncated.SVD_CALLS - before == {"top": 1}
    files = list(tmp_path.rglob("*.safetensors"))
    assert [f.name for f in files] == ["top-8.safetensors"]
    U2, S2, V2 = wspectra.SpectraCache(tmp_path).entry(W.clone()).top(5)  # another object, same content
    assert truncated.SVD_CALLS - before == {"top": 1}  # served from top-8
    assert torch.equal(S2, S[:5]) and torch.equal(U2, U[:, :5]) and torch.equal(V2, V[:, :5])
    cache.entry(W).top(12)  # more than stored: computed and stored beside
    assert truncated.SVD_CALLS - before == {"top": 2}
    ref = torch.linalg.svdvals(W.double())
    np.testing.assert_allclose(S.numpy(), ref[:8].numpy(), rtol=1e-12)


def test_left_basis_is_stored_once_and_identical_cold_and_warm(tmp_path):
    cache = wspectra.SpectraCache(tmp_path)
    W = _W(30, 40)
    before = truncated.SVD_CALLS.copy()
    cold = cache.entry(W).left()
    warm = cache.entry(W).left()
    assert truncated.SVD_CALLS - before == {"left-eigh": 1}
    assert torch.equal(cold, warm) and cold.shape == (30, 30)
    U_ref = torch.linalg.svd(W.double())[0]
    np.testing.assert_allclose((cold.T @ U_ref).abs().amax(1).numpy(), 1.0, atol=1e-6)


def test_the_cache_lives_under_lorascope_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASCOPE_CACHE", str(tmp_path / "c"))
    assert wspectra.SpectraCache().root == tmp_path / "c" / "wspectra"
    wspectra.SpectraCache().entry(_W()).top(3)
    assert list((tmp_path / "c" / "wspectra").rglob("top-3.safetensors"))


def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path):
    cache = wspectra.SpectraCache(tmp_path)
    W = _W()
    U, S, V = cache.entry(W).top(4)
    (path,) = tmp_path.rglob("top-4.safetensors")
    # 1. Garbage bytes (a torn copy, a full disk in another tool).
    path.write_bytes(b"\x00" * 100)
    stats = wspectra.STATS.copy()
    assert torch.equal(cache.entry(W).top(4)[1], S)
    assert wspectra.STATS - stats == {"corrupt": 1, "miss": 1}
    # 2. A readable file whose numbers were changed: the checksum in its header catches it.
    tensors, meta = run_format.read_tensors(path)
    tensors["S"] = tensors["S"] * 2
    save_file(tensors, str(path), metadata={run_format.HEADER_KEY: json.dumps(meta)})
    stats = wspectra.STATS.copy()
    assert torch.equal(cache.entry(W).top(4)[1], S)
    assert wspectra.STATS - stats == {"corrupt": 1, "miss": 1}
    # 3. Another W's entry under this key (a copied folder): the key in the header does not match.
    other = cache.entry(_W(seed=1))
    other.top(4)
    (theirs,) = other.folder.glob("top-4.safetensors")
    path.write_bytes(theirs.read_bytes())
    stats = wspectra.STATS.copy()
    assert torch.equal(cache.entry(W).top(4)[1], S)
    assert wspectra.STATS - stats == {"corrupt": 1, "miss": 1}
    assert run_format.read_tensors(path)[1]["key"] == wspectra.weight_key(W)  # rewritten for this W


def test_a_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    def full_disk(tmp, tensors, meta):
        Path(tmp).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wspectra, "_write", full_disk)
    cache = wspectra.SpectraCache(tmp_path)
    U, S, V = cache.entry(_W()).top(3)  # the analysis still gets its numbers
    assert S.shape == (3,)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # neither the entry nor a temporary


WORKER = """
import sys, torch
from lorascope import wspectra
g = torch.Generator().manual_seed(0)
W = torch.randn(300, 200, generator=g)
entry = wspectra.SpectraCache(sys.argv[1]).entry(W)
for _ in range(3):
    entry.top(20)
    entry.left()
    for p in entry.folder.glob("*.safetensors"):
        p.unlink(missing_ok=True)  # make the other process compute and write again
entry.top(20)
entry.left()
print(wspectra.STATS["corrupt"])
"""


def test_two_processes_filling_the_cache_at_once(tmp_path):
    cmd = [sys.executable, "-c", WORKER, str(tmp_path)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and [o.strip() for o in outs] == ["0", "0"]
    g = torch.Generator().manual_seed(0)
    entry = wspectra.SpectraCache(tmp_path).entry(torch.randn(300, 200, generator=g))
    stats = wspectra.STATS.copy()
    entry.top(20), entry.left()
    assert wspectra.STATS - stats == {"hit": 2}  # whole, valid files
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_k_beyond_w_is_refused(tmp_path):
    with pytest.raises(Exception, match="k must be"):
        wspectra.SpectraCache(tmp_path).entry(_W()).top(100)


def test_the_key_index_remembers_a_hash_by_identity_and_never_trusts_a_bad_entry(tmp_path):
    cache = wspectra.SpectraCache(tmp_path)
    W, other = _W(), _W(seed=1)
    stats = wspectra.STATS.copy()
    assert cache.key("file-a", W) == wspectra.weight_key(W)
    assert cache.key("file-a", W) == wspectra.weight_key(W)  # by identity: W is not hashed again
    assert wspectra.STATS - stats == {"hashed": 1, "index-hit": 1}
    # An index file that does not parse, names another identity, or names another tensor's key (a
    # valid key, with or without that tensor's probe) costs one hash and is rewritten.
    (index,) = (tmp_path / "v1" / "index").rglob("*.json")
    good = json.loads(index.read_text())
    key_b = wspectra.weight_key(other)
    for bad in (
        "{not json",
        json.dumps({"identity": "file-b", "key": key_b}),
        json.dumps({**good, "key": key_b}),
        json.dumps({**good, "key": key_b, "probe": wspectra._probe(key_b, other)}),
    ):
        index.write_text(bad)
        stats = wspectra.STATS.copy()
        assert cache.key("file-a", W) == wspectra.weight_key(W)
        assert wspectra.STATS - stats == {"hashed": 1}
    # A file that changed while it was read (its identity after the read differs) is not remembered.
    assert cache.key("file-c", W, still=lambda: "file-c, rewritten") == wspectra.weight_key(W)
    stats = wspectra.STATS.copy()
    assert cache.key("file-c", other) == wspectra.weight_key(other)
    assert wspectra.STATS - stats == {"hashed": 1}


def test_a_cache_folder_that_cannot_be_looked_into_costs_time_never_the_analysis(tmp_path, monkeypatch):
    import os

    cache = wspectra.SpectraCache(tmp_path / "cache")
    W = _W()
    want = cache.entry(W).top(3)
    root = str(tmp_path / "cache")
    stat, scandir = os.stat, os.scandir

    def denied(real):
        def call(path, *args, **kw):
            if str(path).startswith(root):  # as for a folder of mode 000, which root's tests cannot make
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kw)

        return call

    monkeypatch.setattr(os, "stat", denied(stat))
    monkeypatch.setattr(os, "scandir", denied(scandir))
    entry = cache.entry(W, key=cache.key("file-a", W))
    got = entry.top(3)
    assert all(torch.allclose(g.abs(), w.abs(), atol=1e-8) for g, w in zip(got, want, strict=True))
    assert entry.left().shape == (W.shape[0], min(W.shape))
    assert entry.random_projection(3) > 0


def test_entries_carry_an_xxh3_checksum_and_an_older_sha256_one_still_checks_out(tmp_path):
    cache = wspectra.SpectraCache(tmp_path)
    W = _W()
    U, S, V = cache.entry(W).top(4)
    (path,) = tmp_path.rglob("top-4.safetensors")
    tensors, meta = run_format.read_tensors(path)
    assert meta["checksum"].startswith(wspectra.CHECKSUM)
    # An entry written before the checksum changed: a bare sha256 hex digest, still served.
    meta["checksum"] = wspectra._checksum(tensors, "sha256")
    assert len(meta["checksum"]) == 64
    save_file(tensors, str(path), metadata={run_format.HEADER_KEY: json.dumps(meta)})
    stats = wspectra.STATS.copy()
    assert torch.equal(cache.entry(W).top(4)[1], S)
    assert wspectra.STATS - stats == {"hit": 1}
    # ... and a changed number under it is caught as before.
    tensors["S"] = tensors["S"] * 2
    save_file(tensors, str(path), metadata={run_format.HEADER_KEY: json.dumps(meta)})
    stats = wspectra.STATS.copy()
    assert torch.equal(cache.entry(W).top(4)[1], S)
    assert wspectra.STATS - stats == {"corrupt": 1, "miss": 1}
