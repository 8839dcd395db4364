"""Every scaling, rank, shape and dtype that a header or a PEFT config gives is checked against the
tensors: each corruption is one line and exit code 2 from every command that reads it."""

from __future__ import annotations

import json

import pytest
import torch
from analysis_fixtures import MODULES, make_run

from lorascope import run_format, runs
from lorascope.cli import main
from lorascope.peft_format import export_peft

pytestmark = pytest.mark.usefixtures("one_thread")


def _commands(bad, good, tmp_path) -> list[list[str]]:
    """Every command that reads an adapter's factors, scaling and rank."""
    bad, good = str(bad), str(good)
    return [
        ["spectrum", bad, "--out", str(tmp_path / "o")],
        ["similarity", good, bad, "--out", str(tmp_path / "o")],
        ["similarity", good, bad, "--factor", "dW-right", "--out", str(tmp_path / "o")],
        ["amplification", bad, "--out", str(tmp_path / "o")],
        ["intruders", bad, "--out", str(tmp_path / "o")],
        ["compare", good, bad, "--out", str(tmp_path / "o")],
        ["export", bad, str(tmp_path / "peft-out")],
        ["trajectory", bad, "--out", str(tmp_path / "o")],
    ]


def _refused_everywhere(capsys, bad, good, tmp_path, needles) -> None:
    for argv in _commands(bad, good, tmp_path):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("lorascope: error: ") and err.count("\n") == 1, (argv, err)
        assert all(n in err for n in needles), (argv, err)
    assert not (tmp_path / "peft-out").exists()


# ------------------------------------------------------------------ lorascope headers


def _set(key, value):
    return lambda meta, tensors: meta.__setitem__(key, value)


def _drop(key):
    return lambda meta, tensors: meta.pop(key)


def _factors(fn):
    """Replace each module's (A, B) by fn(A, B)."""

    def apply(meta, tensors):
        for m in MODULES:
            tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = fn(
                tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"]
            )

    return apply


HEADERS = {
    "scaling nan": (_set("scaling", float("nan")), "header scaling"),
    "scaling inf": (_set("scaling", float("inf")), "header scaling"),
    "scaling -inf": (_set("scaling", float("-inf")), "header scaling"),
    "scaling 0": (_set("scaling", 0.0), "header scaling"),
    "scaling negative": (_set("scaling", -4.0), "header scaling"),
    "scaling string": (_set("scaling", "4"), "header scaling"),
    "scaling null": (_set("scaling", None), "header scaling"),
    "scaling missing": (_drop("scaling"), "header scaling"),
    "scaling huge": (_set("scaling", 1e300), "overflow"),
    "module_scaling nan": (_set("module_scaling", {MODULES[1]: float("nan")}), "module_scaling"),
    "module_scaling inf": (_set("module_scaling", {MODULES[1]: float("inf")}), "module_scaling"),
    "module_scaling list": (_set("module_scaling", [1.0]), "module_scaling"),
    "rank above the tensors": (_set("rank", 64), "the file says rank 64"),
    "rank 0": (_set("rank", 0), "header rank"),
    "module_rank wrong": (_set("module_rank", {MODULES[1]: 2}), "the file says rank 2"),
    "module_rank string": (_set("module_rank", {MODULES[1]: "two"}), "module_rank"),
    "rank string": (_set("rank", "abc"), "header rank"),
    "rank fraction": (_set("rank", 4.5), "header rank"),
    "rank null": (_set("rank", None), "header rank"),
    "format_version string": (_set("format_version", "abc"), "format_version"),
    "transposed factors": (
        _factors(lambda A, B: (A.T.contiguous(), B.T.contiguous())),
        "the file says rank 4",
    ),
    "int64 factors": (_factors(lambda A, B: ((A * 10).long(), (B * 10).long())), "dtype int64"),
    "bool factors": (_factors(lambda A, B: (A > 0, B > 0)), "dtype bool"),
    "complex factors": (_factors(lambda A, B: (A.to(torch.complex64), B.to(torch.complex64))), "complex64"),
    "rank 0 factors": (_factors(lambda A, B: (A[:0], B[:, :0])), "rank 0"),
}


@pytest.fixture
def pair(tmp_path):
    """A good run and a square one (in = out, so transposed factors still chain) to corrupt."""
    good = make_run(tmp_path / "sweep", "r4-s0", 4, n_in=24, n_out=24, seed=0)
    bad = make_run(tmp_path / "sweep", "r4-s1", 4, n_in=24, n_out=24, seed=1)
    return good, bad


@pytest.mark.parametrize("case", list(HEADERS))
def test_a_corrupt_header_is_one_line_from_every_command(pair, tmp_path, capsys, case):
    good, bad = pair
    corrupt, needle = HEADERS[case]
    path = bad / run_format.ADAPTER_FILE
    tensors, meta = run_format.read_tensors(path)
    corrupt(meta, tensors)
    run_format.save_tensors(path, tensors, meta)  # written raw, as damage or another tool would
    _refused_everywhere(capsys, bad, good, tmp_path, [str(path), needle])


def test_a_header_that_is_not_a_json_object_is_one_line(pair, tmp_path, capsys):
    from safetensors.torch import save_file

    good, bad = pair
    path = bad / run_format.ADAPTER_FILE
    tensors, _ = run_format.read_tensors(path)
    save_file(tensors, str(path), metadata={run_format.HEADER_KEY: json.dumps([1, 2])})
    _refused_everywhere(capsys, bad, good, tmp_path, [str(path), "not an object"])


# ------------------------------------------------------------------ PEFT adapter folders


def _cfg(key, value):
    return lambda config, tensors: config.__setitem__(key, value)


def _peft_factors(fn):
    def apply(config, tensors):
        for key in [k for k in tensors if k.endswith("lora_A.weight")]:
            b_key = key.replace("lora_A", "lora_B")
            tensors[key], tensors[b_key] = fn(tensors[key], tensors[b_key])

    return apply


PEFT = {
    "lora_alpha NaN": (_cfg("lora_alpha", float("nan")), "lora_alpha"),
    "lora_alpha Infinity": (_cfg("lora_alpha", float("inf")), "lora_alpha"),
    "lora_alpha string": (_cfg("lora_alpha", "x"), "lora_alpha"),
    "lora_alpha null": (_cfg("lora_alpha", None), "lora_alpha"),
    "lora_alpha 0": (_cfg("lora_alpha", 0), "lora_alpha"),
    "lora_alpha negative": (_cfg("lora_alpha", -8), "lora_alpha"),
    "lora_alpha 1e308": (_cfg("lora_alpha", 1e308), "overflow"),
    "r string": (_cfg("r", "abc"), "r is 'abc'"),
    "r null": (_cfg("r", None), "r is None"),
    "r fraction": (_cfg("r", 8.7), "r is 8.7"),
    "r 0": (_cfg("r", 0), "r is 0"),
    "rank_pattern string": (_cfg("rank_pattern", "four"), "rank_pattern"),
    "rank_pattern value": (_cfg("rank_pattern", {"query": "four"}), "rank_pattern"),
    "alpha_pattern NaN": (_cfg("alpha_pattern", {"query": float("nan")}), "alpha_pattern"),
    "alpha_pattern string": (_cfg("alpha_pattern", {"query": "x"}), "alpha_pattern"),
    "transposed factors": (_peft_factors(lambda A, B: (A.T.contiguous(), B.T.contiguous())), "says r=4"),
    "int64 factors": (_peft_factors(lambda A, B: ((A * 10).long(), (B * 10).long())), "dtype int64"),
    "bool factors": (_peft_factors(lambda A, B: (A > 0, B > 0)), "dtype bool"),
    "complex factors": (
        _peft_factors(lambda A, B: (A.to(torch.complex64), B.to(torch.complex64))),
        "complex",
    ),
    "rank 0 factors": (_peft_factors(lambda A, B: (A[:0], B[:, :0])), "rank 0"),
}


@pytest.mark.parametrize("case", list(PEFT))
def test_a_corrupt_peft_config_is_one_line_from_every_command(pair, tmp_path, capsys, case):
    from safetensors.torch import load_file, save_file

    good, run = pair
    bad = export_peft(runs.load_run(run), tmp_path / "peft")
    corrupt, needle = PEFT[case]
    config = json.loads((bad / "adapter_config.json").read_text())
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    corrupt(config, tensors)
    (bad / "adapter_config.json").write_text(json.dumps(config))  # NaN and Infinity as Python writes them
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    _refused_everywhere(capsys, bad, good, tmp_path, [str(bad), needle])
