"""Bases told apart by content: the ‖W‖_F fingerprints, whatever folder or hub id names the base;
`--allow-other-base` on compare and similarity for deliberate comparisons across bases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from weights_fixtures import llama_modules, lorascope_run, peft_folder, random_adapters, save_tiny_llama

from lorascope import base_identity as bi
from lorascope.cli import main
from lorascope.compare.inputs import SameBase
from lorascope.errors import LorascopeError
from lorascope.runs import Run, load_run


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorascope: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_fingerprints_agree_to_rtol_on_the_shared_modules():
    a = {"m0": 10.0, "m1": 5.0}
    assert bi.disagreement(a, {"m1": 5.0 * (1 + 5e-5), "m2": 1.0}) is None
    assert bi.same_weights(a, {"m1": 5.0 * (1 + 5e-5)})
    assert bi.disagreement(a, {"m0": 10.0, "m1": 5.01}) == ("m1", 5.0, 5.01)
    assert not bi.same_weights(a, {"m2": 1.0})  # nothing shared: not known to be one base
    run = Run(path=Path("r"), adapters={}, meta={"base_fingerprint": {"m0": 2.0}})
    bi.check_weight(run, {"m0": torch.full((2, 2), 1.0)})  # ‖W‖_F = 2
    with pytest.raises(LorascopeError, match="does not match"):
        bi.check_weight(run, {"m0": 2.1})


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """One base saved under two names, and another base."""
    root = tmp_path_factory.mktemp("bases")
    state = save_tiny_llama(root / "llama", seed=0)
    shutil.copytree(root / "llama", root / "llama-sharded")
    other = save_tiny_llama(root / "other-llama", seed=1)
    return root, state, other


def _peft(root, base, name, seed):
    state = {m + ".weight": torch.zeros(64 if "q_proj" in m else 32, 64) for m in llama_modules()}
    return peft_folder(root, base, random_adapters(state, llama_modules(), seed=seed), name=name)


def test_compare_of_one_base_saved_under_two_names_needs_no_flag(bases, tmp_path, capsys):
    root, _, _ = bases
    a = _peft(tmp_path, root / "llama", "a", seed=1)
    b = _peft(tmp_path, root / "llama-sharded", "b", seed=2)
    assert main(["compare", str(a), str(b), "--k", "2", "--out", str(tmp_path / "map")]) == 0
    assert "allow-other-base" not in capsys.readouterr().err
    assert main(["similarity", str(a), str(b), "--out", str(tmp_path / "sim")]) == 0


def test_two_bases_are_refused_in_one_line_unless_allowed(bases, tmp_path, capsys):
    root, _, _ = bases
    a = _peft(tmp_path, root / "llama", "a", seed=1)
    b = _peft(tmp_path, root / "other-llama", "b", seed=2)
    for command in (["compare", str(a), str(b), "--k", "2"], ["similarity", str(a), str(b)]):
        err = _error(capsys, [*command, "--out", str(tmp_path / "x")])
        assert "different base weights" in err and "--allow-other-base" in err
        assert main([*command, "--allow-other-base", "--out", str(tmp_path / command[0])]) == 0
        err = capsys.readouterr().err
        assert "note: --allow-other-base" in err and "different base weights" in err


def test_recorded_fingerprints_settle_it_whatever_the_names(bases, tmp_path):
    root, state, other = bases
    ads = random_adapters(state, llama_modules())
    same = SameBase()
    same.add(load_run(lorascope_run(tmp_path, str(root / "llama"), ads, state, name="r1")), "r1")
    same.add(
        load_run(lorascope_run(tmp_path, "org/tiny-llama", ads, state, name="r2")), "r2"
    )  # no such folder
    with pytest.raises(LorascopeError, match="different base weights"):
        same.add(load_run(lorascope_run(tmp_path, str(root / "llama"), ads, other, name="r3")), "r3")


def test_a_peft_base_that_cannot_be_opened_is_told_by_its_name(bases, tmp_path):
    """No fingerprint to read: the same name is taken as the same base, another name as another."""
    root, state, _ = bases
    ads = random_adapters(state, llama_modules())
    runs = [
        load_run(peft_folder(tmp_path, tmp_path / f"gone{i}" / name, ads, name=f"p{i}"))
        for i, name in enumerate(("tiny-llama", "Tiny-Llama", "mistral"))
    ]
    same = SameBase()
    same.add(runs[0], "p0")
    same.add(runs[1], "p1")  # names compared loosely: one base
    with pytest.raises(LorascopeError, match="different base models"):
        same.add(runs[2], "p2")
    allowed = SameBase(allow_other=True)
    for i, run in enumerate(runs):
        allowed.add(run, f"p{i}")
    assert len(allowed.others) == 1
