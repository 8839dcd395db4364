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
float32 (or as stored, dtype=None) in nn.Linear's (out, in) layout. Module names map to checkpoint
keys through their dotted suffixes, so a run's "bert.encoder.layer.0.attention.self.query" finds
the key "encoder.layer.0.attention.self.query.weight" of a BertModel checkpoint, and the reverse.
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

from lorascope import models
from lorascope.errors import LorascopeError
from lorascope.model_files import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, hub_folder, refuse_pickle_only
from lorascope.run_format import base_fingerprint

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


def match_module(names, wanted: str, where: str = "the base model") -> str:
    """The name in `names` for a module: exact, else the unique name that `wanted` is a dotted suffix
    of, or that is a dotted suffix of `wanted` (run names carry task wrappers such as "bert.")."""
    if wanted in names:
        return wanted
    hits = [n for n in names if n.endswith("." + wanted) or wanted.endswith("." + n)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise LorascopeError(f"module {wanted!r} is not in {where}")
    raise LorascopeError(f"module {wanted!r} is ambiguous in {where}: {', '.join(hits[:4])}")


class Checkpoint:
    """The safetensors tensors of one checkpoint folder, by key; `weight(module)` gives W (out, in)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LorascopeError(f"{self.folder}: no such checkpoint folder")
        self.files = _shards(self.folder)
        self.model_type = self._model_type()
        self.reads: list[str] = []  # keys read through this object, in order
        names = [key.removesuffix(".weight") for key in self.files if key.endswith(".weight")]
        self._names = {name: name + ".weight" for name in names}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._headers: dict[Path, dict[str, dict]] = {}  # resolved file -> its header, for `identity`

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.folder)!r}, {len(self.files)} tensors)"

    def _model_type(self) -> str | None:
        path = self.folder / CONFIG_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as e:
            raise LorascopeError(f"{path}: not a readable JSON object ({e})") from None

    def key(self, module: str) -> str:
        """The key of a module's weight ("<name>.weight"), the name matched by `match_module`."""
        return self._names[match_module(self._names, module, f"the base checkpoint {self.folder}")]

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored shape of a tensor, from its file's header (no tensor data is read)."""
        if key not in self._shapes:
            header = _header(self.files[key])
            self._shapes.update({k: tuple(v["shape"]) for k, v in header.items()})
        return self._shapes[key]

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
        key = self.key(module)
        stored = self.shape(key)
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
        W = self.read(key)
        W = W.T if conv1d else W
        if dtype is None:
            return W.contiguous()
        return W.to(dtype, copy=True).contiguous()  # a copy: never a view of the mapped file


def adapter_shape(adapter) -> tuple[int, int] | None:
    """(out, in) of a module's ΔW: factors (.A (r, in), .B (out, r)), a dense ΔW, or None if unknown."""
    if hasattr(adapter, "A") and hasattr(adapter, "B"):
        return (adapter.B.shape[0], adapter.A.shape[1])
    shape = getattr(adapter, "shape", None)
    return tuple(shape) if shape is not None and len(shape) == 2 else None


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


def check_fingerprint(run, weights: dict[str, torch.Tensor | float]) -> None:
    """Refuse W that is not the run's base weight: ‖W‖_F must match the recorded one to rtol 1e-4.
    weights: module -> W, or its `base_fingerprint` when already computed."""
    recorded = run.meta.get("base_fingerprint") or {}
    for name, W in weights.items():
        expected = recorded.get(name)
        if expected is None:
            continue
        got = float(W) if isinstance(W, float | int) else base_fingerprint(W)
        if abs(got - expected) > 1e-4 * abs(expected):
            raise LorascopeError(
                f"{run.path}: base weight of {name} does not match the run's "
                f"(‖W‖_F {got:.6g} != recorded {expected:.6g}): a different base model?"
            )


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
    rest of a sweep) to rtol 1e-4; check=False leaves that to the caller (`check_fingerprint` with a
    ‖W‖_F it computes anyway). `checkpoint`: an already opened `open_base(run)`."""
    checkpoint = checkpoint or open_base(run)
    others = list(also)
    fan_in_fan_out = run.meta.get("fan_in_fan_out")
    for m in modules:
        W = checkpoint.weight(m, adapter_shape(run.adapters.get(m)), fan_in_fan_out, dtype)
        if check:
            w_norm = base_fingerprint(W)
            for r in (run, *others):
                check_fingerprint(r, {m: w_norm})
        yield m, W


def base_weights(run, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """{module: W} for a few modules at once (all of them in memory: prefer `iter_base_weights`)."""
    return dict(iter_base_weights(run, modules))
