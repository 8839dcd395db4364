"""The base model's W, read from its safetensors checkpoint one tensor at a time (the model is never built).

    for module, W in iter_base_weights(run, modules):    # W (out, in) float32, fingerprint-checked
        ...
    base_weights(run, modules)                          # {module: W}, a few at once

    <folder>/config.json                      model_type: GPT-2's Conv1D layers store W as (in, out)
    <folder>/model.safetensors                one file, or
    <folder>/model.safetensors.index.json     {"weight_map": {key: shard}} and the shards it names

The base is the run's `base_model`: a preset (`minilm`: the embedded safetensors; `smollm2`: the
dequantized copy of its GGUF in the lorascope cache, built once), a local folder, or a hub id found
in the local Hugging Face cache: never a network call. Pickle checkpoints (pytorch_model.bin) are
refused, never unpickled. Only the tensors asked for are read, so peak memory is about one W on top
of the adapters, whatever the number of layers. Any stored dtype (bf16, fp16, fp32) is returned as
float32 (or as stored, dtype=None) in nn.Linear's (out, in) layout. A module name maps to its
checkpoint key exactly, else through dotted suffixes (a run's "bert.encoder.layer.0.attention.self.query"
finds the key "encoder.layer.0.attention.self.query.weight" of a BertModel checkpoint, and the
reverse), else through the key conversion of the installed transformers for the checkpoint's model
(`lorascope.key_mapping`: "vit.layers.0.attention.q_proj" is stored as
"vit.encoder.layer.0.attention.attention.query.weight"). `-v` logs each match that is not exact.
bitsandbytes 4-bit and 8-bit weights are dequantized (`lorascope.quantized`). Convolution kernels
are read as their (out, in·Π k) matrix and one expert of a 3-D MoE parameter as its slice.
(A run's own training snapshots are `checkpoints/` in its folder: `lorascope.run_format`.)
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from lorascope import models, quantized
from lorascope.base_identity import check_weight
from lorascope.errors import LorascopeError
from lorascope.families.layouts import EXPERT_NAME, flatten_kernel
from lorascope.model_files import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, hub_folder, refuse_pickle_only
from lorascope.names import match_module, suffix_matches

log = logging.getLogger(__name__)

# Model types whose attention/MLP projections are transformers' Conv1D, stored (in, out).
CONV1D_LAYERS = {
    model_type: ("c_attn", "c_proj", "c_fc", "q_attn")
    for model_type in ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")
}

# Tensor key -> times read, over the process: lets tests and benchmarks check what was read.
TENSORS_READ: Counter = Counter()


def _shards(folder: Path) -> dict[str, Path]:
    """tensor key -> safetensors file, from the index of a sharded checkpoint or a single file."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LorascopeError(f"{index}: not a readable safetensors index ({e})") from None
        files = {key: folder / name for key, name in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise LorascopeError(f"{index}: lists shard {path.name}, which is missing from {folder}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return {key: folder / SINGLE_FILE for key in _header(folder / SINGLE_FILE)}
    refuse_pickle_only(folder)
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    hint = f" ({', '.join(others[:3])} are not a model checkpoint's names)" if others else ""
    raise LorascopeError(f"{folder}: holds no model weights: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def _header(path: Path) -> dict[str, dict]:
    """The safetensors header of one file: {key: {"dtype", "shape", ...}}, without reading tensors."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100 * 2**20:
                raise ValueError(f"header size {size}")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as e:
        raise LorascopeError(f"{path}: not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


class Checkpoint:
    """The safetensors tensors of one checkpoint folder, by key; `weight(module)` gives W (out, in)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LorascopeError(f"{self.folder}: no such checkpoint folder")
        self.files = _shards(self.folder)
        self.config = self._config()
        self.model_type = self.config.get("model_type") if self.config else None
        self.quantization = quantized.describe(self.config)  # None, or e.g. "bitsandbytes 4-bit nf4"
        self.reads: list[str] = []  # keys read through this object, in order
        names = [key.removesuffix(".weight") for key in self.files if key.endswith(".weight")]
        self._names = {name: name + ".weight" for name in names}
        self._matched: dict[str, str] = {}  # module -> its name in _names, once matched
        self._mapped_names = None  # key_mapping.MappedNames of this checkpoint, False: no conversion
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str | None] = {}
        self._headers: dict[Path, dict[str, dict]] = {}  # resolved file -> its header, for `identity`

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.folder)!r}, {len(self.files)} tensors)"

    def _config(self) -> dict | None:
        path = self.folder / CONFIG_FILE
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise LorascopeError(f"{path}: not a readable JSON object ({e})") from None
        if not isinstance(config, dict):
            raise LorascopeError(f"{path}: not a readable JSON object")
        return config

    def key(self, module: str) -> str:
        """The key of a module's weight ("<name>.weight"): the name itself, else the unique name that
        is a dotted suffix of the module's or ends in it (task wrappers such as "bert."), else the
        key that transformers' conversion for this model loads under the module's name (`_mapped`).

        The suffix match comes before the conversion because it needs no transformers import
        (seconds per command), and it cannot take a renamed module's place: a stored key that is
        a dotted suffix of the in-memory name, or the reverse, names the same path in the module
        tree, which no rename of transformers' maps to another module."""
        if module in self._names:
            return self._names[module]
        if module not in self._matched:
            where = f"the base checkpoint {self.folder}"
            hits = suffix_matches(self._names, module)
            if len(hits) == 1:
                log.info("module %s: checkpoint key %s (dotted-suffix match)", module, self._names[hits[0]])
                self._matched[module] = hits[0]
            else:
                name = self._mapped(module)
                self._matched[module] = name if name is not None else match_module(self._names, module, where)
        return self._names[self._matched[module]]

    def _mapped(self, module: str) -> str | None:
        """The checkpoint name that transformers' load conversion gives `module`'s name (`key_mapping`)."""
        from lorascope.key_mapping import MappedNames, key_map

        if self._mapped_names is None:
            mapping = key_map(self.folder)
            self._mapped_names = MappedNames(mapping, self._names) if mapping is not None else False
        return self._mapped_names.find(module) if self._mapped_names else None

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored shape of a tensor, from its file's header (no tensor data is read)."""
        if key not in self._shapes:
            header = _header(self.files[key])
            self._shapes.update({k: tuple(v["shape"]) for k, v in header.items()})
            self._dtypes.update({k: v.get("dtype") for k, v in header.items()})
        return self._shapes[key]

    def stored_dtype(self, key: str) -> str | None:
        """The safetensors dtype of a tensor ("BF16", "U8", ...), from its file's header."""
        self.shape(key)
        return self._dtypes.get(key)

    def _dequantized(self, key: str, layout: str) -> torch.Tensor:
        """W of a bitsandbytes-quantized weight (`lorascope.quantized`), read with its state tensors."""
        if layout == "4bit":
            state = {k: self.read(k) for k in quantized.state_keys(key, self.files)}
            return quantized.dequantize_4bit(self.read(key), state, key)
        scales = key.removesuffix("weight") + quantized.INT8_SCALES
        return quantized.dequantize_8bit(self.read(key), self.read(scales), key)

    def identity(self, module: str, fan_in_fan_out: bool | None = None) -> str:
        """Names the bytes `weight(module, ...)` returns without reading them: the file (resolved path,
        device, inode, size, modification and change times), the tensor's key, dtype, shape and byte
        range, and the layout. Any rewrite of the file changes its change time (ctime), so equal
        identities mean equal tensors; the W-spectra cache keeps content keys under this name so
        that a warm analysis does not hash W again (`wspectra.SpectraCache.key`)."""
        key = self.key(module)
        path = self.files[key].resolve()
        st = path.stat()
        if path not in self._headers:
            self._headers[path] = _header(path)
        entry = self._headers[path][key]
        conv1d = self._conv1d(module)
        return json.dumps(
            {
                "file": [str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
                "tensor": [key, entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")],
                "transposed": bool(fan_in_fan_out) if conv1d is None else conv1d,
            },
            sort_keys=True,
        )

    def _conv1d(self, module: str) -> bool | None:
        """Whether config.json's model_type stores this module as Conv1D (in, out); None without one."""
        if self.model_type is None:
            return None
        return module.rsplit(".", 1)[-1] in CONV1D_LAYERS.get(self.model_type, ())

    def is_conv1d(self, module: str, fan_in_fan_out: bool | None = None) -> bool:
        """Whether the module is stored (in, out): from config.json's model_type when there is one
        (the checkpoint knows its layers; c_proj is square, so shapes cannot tell), else the
        adapter's fan_in_fan_out (PEFT sets it for Conv1D targets)."""
        conv1d = self._conv1d(module)
        if conv1d is None:
            return bool(fan_in_fan_out)
        if fan_in_fan_out is not None and bool(fan_in_fan_out) != conv1d:
            kind = "Conv1D" if conv1d else "Linear"
            log.warning(
                "%s: the adapter says fan_in_fan_out=%s, but %s models store it as %s: following the model",
                module, fan_in_fan_out, self.model_type, kind,
            )  # fmt: skip
        return conv1d

    def read(self, key: str) -> torch.Tensor:
        """One tensor as stored (dtype and layout), read alone from its file; counted in TENSORS_READ."""
        from safetensors import safe_open

        if key not in self.files:
            raise LorascopeError(f"{self.folder}: has no tensor {key!r}")
        try:
            with safe_open(str(self.files[key]), framework="pt") as f:
                tensor = f.get_tensor(key)
        except Exception as e:  # safetensors raises its own error types, and OSError on short reads
            raise LorascopeError(f"{self.files[key]}: cannot read tensor {key} ({e})") from None
        TENSORS_READ[key] += 1
        self.reads.append(key)
        return tensor

    def weight(
        self,
        module: str,
        shape: tuple[int, int] | None = None,
        fan_in_fan_out: bool | None = None,
        dtype: torch.dtype | None = torch.float32,
    ) -> torch.Tensor:
        """W of a module, (out, in) (Conv1D transposed), as a `dtype` copy; dtype=None: as stored, which
        may be a read-only view of the mapped file (no copy: hash it or convert it, do not modify it).
        `shape` (out, in): the adapter's, checked against the stored shape before any data is read."""
        expert = self._expert(module)
        if expert is not None:  # one expert's slice of a 3-D MoE parameter, read alone
            return _dtype(expert_weight(self, *expert, shape), dtype)
        key = self.key(module)
        layout = quantized.layout(key, self.files, self.config, self.stored_dtype(key))
        W = self._dequantized(key, layout) if layout else None  # its shape is known once dequantized
        stored = tuple(W.shape) if W is not None else self.shape(key)
        # a convolution kernel (out, in, k…) as its (out, in·Π k) matrix
        if W is None and len(stored) in (3, 4, 5):
            W = flatten_kernel(self.read(key))
            if shape is not None and tuple(W.shape) != tuple(shape):
                raise LorascopeError(
                    f"module {module}: the base kernel {key} {stored} is {tuple(W.shape)} as a matrix, "
                    f"but the adapter's ΔW is {tuple(shape)}: a grouped convolution, or not the run's base "
                    "model"
                )
            return _dtype(W, dtype)
        if len(stored) != 2:
            raise LorascopeError(f"{key} has shape {stored}: not a linear layer's weight")
        conv1d = self.is_conv1d(module, fan_in_fan_out)
        out_in = (stored[1], stored[0]) if conv1d else tuple(stored)
        if shape is not None and out_in != tuple(shape):
            layout = f" (stored {stored}, Conv1D)" if conv1d else ""
            raise LorascopeError(
                f"module {module}: the base weight {key} is {out_in}{layout}, but the adapter's ΔW is "
                f"{tuple(shape)}: is {self.folder} the run's base model?"
            )
        W = self.read(key) if W is None else W
        return _dtype(W.T if conv1d else W, dtype)

    def _expert(self, module: str) -> tuple[str, int] | None:
        """(key of the 3-D parameter, expert index) for a name "<module>.<e>.<param>" that has no
        ".weight" key of its own but whose "<module>.<param>" is stored (E, d1, d2)."""
        m = EXPERT_NAME.fullmatch(module)
        if m is None or any(
            n == module or n.endswith("." + module) or module.endswith("." + n) for n in self._names
        ):
            return None
        name = f"{m['module']}.{m['param']}"
        keys = [k for k in self.files if k == name or k.endswith("." + name) or name.endswith("." + k)]
        if len(keys) != 1 or len(self.shape(keys[0])) != 3:
            return None
        return keys[0], int(m["index"])

    def read_slice(self, key: str, index: int) -> torch.Tensor:
        """tensor[index] of a stored tensor, reading only that slice from the file."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.files[key]), framework="pt") as f:
                tensor = f.get_slice(key)[index]
        except Exception as e:  # safetensors raises its own error types
            raise LorascopeError(f"{self.files[key]}: cannot read tensor {key}[{index}] ({e})") from None
        TENSORS_READ[f"{key}[{index}]"] += 1
        self.reads.append(f"{key}[{index}]")
        return tensor


def _dtype(W: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """W as `dtype` (a copy: never a view of the mapped file), or as stored (dtype None)."""
    if dtype is None:
        return W.contiguous()
    return W.to(dtype, copy=True).contiguous()


def expert_weight(checkpoint: Checkpoint, key: str, index: int, shape) -> torch.Tensor:
    """Expert `index` of a 3-D parameter (E, d1, d2): (d1, d2) as stored, or its transpose when the
    adapter's ΔW is (d2, d1) (experts stored (E, in, out)); square experts are taken as stored."""
    E, d1, d2 = checkpoint.shape(key)
    if not 0 <= index < E:
        raise LorascopeError(f"{key} holds {E} experts; there is no expert {index}")
    W = checkpoint.read_slice(key, index)
    if shape is None or tuple(shape) == (d1, d2):
        return W
    if tuple(shape) == (d2, d1):
        return W.T
    raise LorascopeError(f"{key}[{index}] is {(d1, d2)}, but the adapter's ΔW is {tuple(shape)}")


def adapter_shape(delta) -> tuple[int, int] | None:
    """(out, in) of a module's ΔW (any kind of `lorascope.delta.Delta`), or None if the run has no such
    module."""
    return None if delta is None else tuple(delta.shape)


def open_named(name: str, resolve) -> Checkpoint:
    """The checkpoint of a base model by name. resolve: name -> (folder or hub id, is_local), as
    `models.resolve` (presets, local folders, hub ids); a hub id is looked up in the local cache."""
    where, local = resolve(name)
    return Checkpoint(where if local else hub_folder(where))


def open_for_run(run, resolve) -> Checkpoint:
    """The checkpoint of a run's base model (`open_named` of its `base_name`)."""
    try:
        return open_named(base_name(run), resolve)
    except LorascopeError as e:
        raise LorascopeError(f"{run.path}: base model not available offline: {e}") from None


def base_name(run) -> str:
    """The base model a run was trained on: its header's base_model, else its config's model name."""
    model = (run.config or {}).get("model")
    base = run.meta.get("base_model") or (model.get("name_or_path") if isinstance(model, dict) else None)
    if not base:
        raise LorascopeError(f"{run.path}: records no base model; cannot read W")
    return str(base)


def open_base(run) -> Checkpoint:
    """The run's base checkpoint: a preset, a local folder, or a hub id in the local cache."""
    return open_for_run(run, models.resolve)


def iter_base_weights(
    run,
    modules: Iterable[str],
    *,
    checkpoint: Checkpoint | None = None,
    also: Iterable = (),
    dtype: torch.dtype | None = torch.float32,
    check: bool = True,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(module, W) for each module of `run`, W (out, in) in `dtype` (float32 by default, whatever the
    stored dtype; None: as stored, a read-only view of the mapped file), read one at a time (a
    generator: keep only what you need). Shapes are checked against the run's adapters; Conv1D from
    the checkpoint's config.json, else the run's fan_in_fan_out. Each W is checked against the
    fingerprint ‖W‖_F of `run` and of every run in `also` (runs that must share the base, e.g. the
    rest of a sweep) to rtol 1e-4; check=False leaves that to the caller (`base_identity.check_weight`
    with a ‖W‖_F it computes anyway). `checkpoint`: an already opened `open_base(run)`, or another
    copy of the base (`--base DIR`)."""
    from lorascope.run_format import base_fingerprint

    checkpoint = checkpoint or open_base(run)
    others = list(also)
    fan_in_fan_out = run.meta.get("fan_in_fan_out")
    for m in modules:
        W = checkpoint.weight(m, adapter_shape(run.adapters.get(m)), fan_in_fan_out, dtype)
        if check:
            w_norm = base_fingerprint(W)
            for r in (run, *others):
                check_weight(r, {m: w_norm})
        yield m, W


def base_weights(run, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """{module: W} for a few modules at once (all of them in memory: prefer `iter_base_weights`)."""
    return dict(iter_base_weights(run, modules))
