"""The CLI's one-line refusals name what the user can type: flags that exist, counts of at least 1,
a device that is there; similarity, like compare, refuses adapters of two bases."""

from __future__ import annotations

import pytest
from analysis_fixtures import make_run

from lorascope import run_format
from lorascope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("lorascope: error: ") and err.count("\n") == 1, err
    return err


def _on_base(run, base: str) -> None:
    tensors, meta = run_format.read_tensors(run / run_format.ADAPTER_FILE)
    run_format.save_tensors(run / run_format.ADAPTER_FILE, tensors, {**meta, "base_model": base})


@pytest.fixture
def two(tmp_path):
    return make_run(tmp_path / "sweep", "r4-s0", 4, seed=0), make_run(tmp_path / "sweep", "r8-s1", 8, seed=1)


def test_refusals_name_flags_that_exist(two, tmp_path, capsys):
    a, b = two
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    err = _error(capsys, ["export", str(a), str(full)])
    assert "--overwrite" in err and "pass overwrite=True" not in err
    _on_base(b, "another/base")
    err = _error(capsys, ["compare", str(a), str(b)])
    assert "different base models" in err and "check_base" not in err


def test_similarity_refuses_adapters_of_two_bases(two, capsys):
    a, b = two
    _on_base(b, "another/base")
    assert "different base models" in _error(capsys, ["similarity", str(a), str(b)])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["spectrum", "{a}", "--top", "-3"], "--top -3: want at least 1"),
        (["spectrum", "{a}", "--top", "0"], "--top 0: want at least 1"),
        (["compare", "{a}", "{b}", "--k", "0"], "--k 0: want at least 1"),
        (["amplification", "{a}", "--k", "-1"], "--k -1: want at least 1"),
        (["similarity", "{a}", "{b}", "--per-page", "0"], "--per-page 0: want at least 1"),
    ],
)
def test_counts_below_one_are_refused(two, capsys, argv, needle):
    a, b = two
    assert needle in _error(capsys, [x.format(a=a, b=b) for x in argv])


def test_device_cuda_without_cuda_is_refused(two, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    sweep = two[0].parent
    err = _error(capsys, ["figures", str(sweep), "--device", "cuda", "--out", str(tmp_path / "f")])
    assert "no CUDA device" in err and not (tmp_path / "f").exists()


def test_a_full_disk_during_an_analysis_leaves_no_cut_off_file(two, tmp_path, capsys, monkeypatch):
    import errno
    from pathlib import Path

    a = two[0]
    out = tmp_path / "o"
    assert main(["spectrum", str(a), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_text = Path.write_text

    def full_disk(self, text, *args, **kw):
        write_text(self, text[: len(text) // 2], *args, **kw)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    capsys.readouterr()
    assert "No space left on device" in _error(capsys, ["spectrum", str(a), "--out", str(out)])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old files whole, no temporaries


def test_a_refused_permission_is_not_reported_as_a_missing_file(tmp_path, monkeypatch):
    # Tests run as root, where chmod cannot refuse a read: the refusal is made where it arrives.
    import errno
    from pathlib import Path

    import pytest

    from lorascope.errors import LorascopeError
    from lorascope.run_format import read_tensors

    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"")
    real_stat = Path.stat

    def stat(self, *a, **kw):
        if self == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(LorascopeError, match=r"cannot be read \(Permission denied\)"):
        read_tensors(target)
