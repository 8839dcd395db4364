"""The run format: what a run folder holds and how its files are written and read.

    runs/<sweep>/<run>/
      config.yaml                 resolved config of this run
      adapter.safetensors         "<module>.lora_A" (r, in), "<module>.lora_B" (out, r) + header metadata;
                                  a DoRA run (lora.dora) also "<module>.lora_magnitude" m (out,), its ΔW
                                  m ⊙ (W + s·B A)/‖W + s·B A‖ − W (`lorascope.families.dora`); a run with
                                  a shifting init (lora.init=pissa|milora|olora) has ΔW = s·(B A − B0 A0),
                                  A0, B0 from adapter_init.safetensors (`lorascope.families.shifted`)
      adapter_init.safetensors    the same at step 0
      delta.safetensors           a full fine-tuning run instead: "<module>.delta", ΔW = W_T − W_0 (out, in)
      head.safetensors            trained extra modules (a classification head), if any
      checkpoints/step-<N>/adapter.safetensors   (delta.safetensors for full fine-tuning)
      checkpoints/resume.safetensors              the state to resume a killed run from its last snapshot
      metrics.jsonl               one JSON object per logged step / eval
      summary.json                written last, atomically; "status": "complete" marks a finished run

A leaf: the lorascope run reader (`lorascope.runs`) and the PEFT reader (`lorascope.peft_format`)
both build on it, and it imports neither. Nothing is loaded with pickle. Every file is written to
a temporary name and renamed, so an interrupted write never leaves a half file under the real name.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lorascope import format_checks
from lorascope.errors import LorascopeError

if TYPE_CHECKING:  # tensors are imported where they are read: listing a sweep needs no torch
    import torch

    from lorascope.delta import Adapter, DenseDelta

FORMAT = "lorascope"
FORMAT_VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
INIT_FILE = "adapter_init.safetensors"
DELTA_FILE = "delta.safetensors"
HEAD_FILE = "head.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
PEFT_CONFIG_FILE = "adapter_config.json"
HEADER_KEY = "lorascope"  # the safetensors header entry holding a file's metadata as JSON

# The ΔW kinds a run holds live in `lorascope.delta` (torch); they are run_format's names too, imported
# on first use so that listing a sweep (`lorascope ls`) never imports torch.
_DELTA_NAMES = ("Adapter", "DenseDelta")


def __getattr__(name: str):
    if name in _DELTA_NAMES:
        from lorascope import delta

        return getattr(delta, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Run:
    """A loaded run: factors by module name, plus what the run folder says about itself."""

    path: Path
    adapters: dict[str, Adapter | DenseDelta]  # by module; DenseDelta in a full fine-tuning run
    meta: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Adapter] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    kind: str = FORMAT
    # (adapters, file) -> each module's ΔW kind (DoRA, shifted init) for snapshots; None: as read
    kinds: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        """ "lora", or "full" for a full fine-tuning run (dense ΔW, no factors)."""
        return self.meta.get("method", "lora")

    @property
    def rank(self) -> int:
        """The LoRA rank; for a full fine-tuning run, the largest possible rank min(out, in)."""
        from lorascope.delta import rank_bound

        return int(self.meta.get("rank") or max(rank_bound(a) for a in self.adapters.values()))

    @property
    def update_file(self) -> str:
        return DELTA_FILE if self.method == "full" else ADAPTER_FILE

    @property
    def status(self) -> str:
        return self.summary.get("status", "incomplete")

    @property
    def base_model(self) -> str | None:
        return self.meta.get("base_model")

    @cached_property
    def metrics(self):
        """metrics.jsonl as a pandas DataFrame (empty if the run logged nothing)."""
        return read_metrics(self.path)

    def checkpoints(self) -> dict[int, Path]:
        """Snapshot files by training step."""
        return snapshot_files(self.path, self.update_file)

    def load_checkpoint(self, step: int) -> dict[str, Adapter | DenseDelta]:
        snapshots = self.checkpoints()
        if step not in snapshots:
            raise LorascopeError(f"{self.path}: no checkpoint at step {step}; have {list(snapshots)}")
        adapters = read_update(snapshots[step])[0]
        return self.kinds(adapters, snapshots[step]) if self.kinds is not None else adapters


def snapshot_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step}"


def snapshot_files(run_dir: Path, file: str = ADAPTER_FILE) -> dict[int, Path]:
    """{step: checkpoints/step-<step>/<file>} for every snapshot a run folder holds, by step."""
    root = Path(run_dir) / CHECKPOINT_DIR
    found = {}
    for d in root.glob("step-*") if root.is_dir() else ():
        step = d.name.removeprefix("step-")
        if step.isdigit() and (d / file).is_file():
            found[int(step)] = d / file
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------- writing


TMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp onto path: readers see the old file or the new one.

    The temporary file is created with mode 0666 less the umask, like any file the user writes (0644
    under umask 022), so that others on a shared file system can read runs; a process killed mid-write
    leaves only a hidden `.<name>.<token>.tmp`, which `remove_temporaries` clears."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`text` written to `path` through `atomic_write`: a full disk leaves the old file, never half."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the `.*.tmp` files that writes killed midway left under a folder; returns them."""
    found = [p for p in Path(folder).rglob(f".*{TMP_SUFFIX}") if p.is_file()] if Path(folder).is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±Inf) replaced by None: JSON has no NaN token, and
    other tools' JSON readers refuse it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors file with the metadata as one JSON header entry ("lorascope"), written atomically.

    One entry, keys sorted: safetensors writes several header entries in hash-map order, which
    changes from process to process, and the same run must give the same bytes."""
    from safetensors.torch import save

    header = {HEADER_KEY: json.dumps(metadata, sort_keys=True)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # Serialised here and written by us, not by save_file, which creates its file private (0600).
    data = save(tensors, metadata=header)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def adapter_metadata(
    *,
    rank: int,
    alpha: float,
    scaling: float,
    base_model: str,
    targets: Any,
    init: str,
    rslora: bool,
    base_fingerprint: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The header every adapter file carries, so that a file explains itself."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rank": rank,
        "alpha": alpha,
        "scaling": scaling,
        "base_model": base_model,
        "targets": targets,
        "init": init,
        "rslora": rslora,
        "base_fingerprint": base_fingerprint or {},
        **extra,
    }


def save_adapter(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write "<module>.lora_A"/"<module>.lora_B" tensors with `adapter_metadata(...)` as header."""
    _split_factors(tensors, path, metadata)  # refuse to write what could not be read back
    save_tensors(path, tensors, metadata)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(Path(run_dir) / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep the metrics.jsonl records up to `last_step` (a resumed run logs the later steps again)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line, row in _records(read_text(path)) if row.get("step", 0) <= last_step]
    text = "".join(line + "\n" for line in kept)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Written last: a run is complete exactly when summary.json says "status": "complete"."""
    text = json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n"
    atomic_write(Path(run_dir) / SUMMARY_FILE, lambda tmp: tmp.write_text(text))


def base_fingerprint(W: torch.Tensor, rows: int = 256) -> float:
    """‖W‖_F in float64: cheap, dtype-robust, and enough to tell two base models apart.

    Summed over blocks of `rows` rows converted into one reused float64 buffer
    (`krylov.float64_rows`): a bf16 W of a 7B model (32 MiB) is never copied whole to float64
    (128 MiB, 6x as long as the sum)."""
    import torch

    from lorascope.krylov import float64_rows, square_sum

    W = W.detach().cpu()
    if W.ndim < 2:
        return float(torch.linalg.vector_norm(W.double()))
    if W.ndim > 2:  # a convolution's (out, in, kh, kw): its rows, flattened
        W = W.reshape(W.shape[0], -1)
    total = torch.zeros((), dtype=torch.float64)
    for _, block in float64_rows(W, rows):
        total += square_sum(block)
    return math.sqrt(float(total))


# ----------------------------------------------------------------------------- reading


def read_text(path: Path) -> str:
    """A run's text file (config, summary, metrics), or one line saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LorascopeError(f"{path}: not UTF-8 text (byte {e.start}): a damaged file?") from None
    except OSError as e:
        raise LorascopeError(f"{path}: cannot be read ({e.strerror or e})") from None


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise LorascopeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if config is not None and not isinstance(config, dict):
        raise LorascopeError(f"{path}: holds a YAML {type(config).__name__}, not a mapping of config keys")
    return config or {}


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json as a dict; {} for a run that has not finished. A PEFT folder is a finished adapter."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        if (Path(run_dir) / PEFT_CONFIG_FILE).is_file() and not (Path(run_dir) / ADAPTER_FILE).is_file():
            return {"status": "complete", "kind": "peft"}
        return {}
    try:
        summary = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise LorascopeError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict):
        raise LorascopeError(f"{path}: holds a JSON {type(summary).__name__}, not an object")
    return summary


def _records(text: str) -> list[tuple[str, dict[str, Any]]]:
    """metrics.jsonl's (line, record) pairs, up to the first line that is not a JSON object (cut short
    by a kill, or damaged): that line ends the log."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(row, dict):
                break
            rows.append((line, row))
    return rows


def read_metrics(run_dir: Path):
    import pandas as pd

    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return pd.DataFrame()
    return pd.DataFrame([row for _, row in _records(read_text(path))])


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded header metadata of a safetensors file; a clear error if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        raise LorascopeError(f"{path}: no such file") from None
    except OSError as e:  # a permission refused is not a missing file: say which
        raise LorascopeError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types, and OSError on short reads
        raise LorascopeError(f"{path}: not a readable safetensors file ({e})") from None
    if HEADER_KEY in header:
        try:
            return tensors, json.loads(header[HEADER_KEY])
        except json.JSONDecodeError as e:
            raise LorascopeError(f"{path}: its metadata header is not valid JSON ({e})") from None
    meta = {}
    for k, v in header.items():  # one entry per key: written by another tool, or by lorascope < 0.1
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


def _split_factors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, Any] | None = None) -> dict:
    """{module: (A, B)}, each pair checked against the header `meta` (its rank, or `module_rank`'s)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        module, _, part = key.rpartition(".")
        if part == MAGNITUDE:  # DoRA's m: read by `read_magnitudes`
            continue
        if part not in ("lora_A", "lora_B"):
            raise LorascopeError(f"{path}: unexpected tensor {key!r} (want <module>.lora_A / .lora_B)")
        pairs.setdefault(module, {})[part] = t
    ranks = _header_ranks(path, meta) if meta is not None else None
    out = {}
    for module, p in pairs.items():
        if set(p) != {"lora_A", "lora_B"}:
            raise LorascopeError(f"{path}: module {module} has only {', '.join(p)}")
        rank = None if ranks is None else ranks[1].get(module, ranks[0])
        format_checks.check_factors(path, module, p["lora_A"], p["lora_B"], rank)
        out[module] = (p["lora_A"], p["lora_B"])
    return out


def _header_ranks(path: Path, meta: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """The header's rank and its per-module exceptions (`module_rank`, for adapters of mixed ranks)."""
    rank = format_checks.positive_int(path, "header rank", meta.get("rank"))
    per_module = _per_module(path, meta, "module_rank")
    return rank, {
        m: format_checks.positive_int(path, f"header module_rank[{m}]", r) for m, r in per_module.items()
    }


def _per_module(path: Path, meta: dict[str, Any], field: str) -> dict[str, Any]:
    value = meta.get(field) or {}
    if not isinstance(value, dict):
        raise LorascopeError(f"{path}: header {field} is {value!r}; want a JSON object")
    return value


def check_finite(path: Path, module: str, name: str, tensor: torch.Tensor) -> None:
    """Refuse NaN or Inf in a saved update: it is the trace of a diverged run, and no SVD of it means
    anything.

    One pass first: a sum is finite only if no entry is NaN or ±Inf (both propagate), and it reads the
    tensor once without the bool copy of `isfinite`. A sum that overflows (huge finite entries, or fp16)
    falls back to the entrywise test, which decides."""
    total = float(tensor.sum()) if tensor.numel() else 0.0
    if not math.isfinite(total) and not bool(tensor.isfinite().all()):
        raise LorascopeError(
            f"{path}: module {module} holds non-finite values (NaN or Inf) in {name}: the run diverged, "
            "and its update cannot be analysed"
        )


def _lorascope_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = read_tensors(path)
    if not tensors:
        raise LorascopeError(f"{path}: holds no tensors")
    meta = format_checks.header_dict(path, meta)
    if meta.get("format") != FORMAT:
        raise LorascopeError(f"{path}: not a lorascope adapter file (no format header)")
    if format_checks.format_version(path, meta.get("format_version", 0)) > FORMAT_VERSION:
        raise LorascopeError(
            f"{path}: format version {meta['format_version']} is newer than this lorascope "
            f"reads ({FORMAT_VERSION}); upgrade lorascope"
        )
    return tensors, meta


def read_adapter(path: Path) -> tuple[dict[str, Adapter], dict[str, Any]]:
    """Adapters by module name and the header metadata of one lorascope adapter file."""
    from lorascope import delta
    from lorascope.krylov import one_thread  # a leaf below delta

    tensors, meta = _lorascope_file(path)
    scaling = format_checks.positive_number(path, "header scaling", meta.get("scaling"))
    per_module = _per_module(path, meta, "module_scaling")
    adapters = {}
    with one_thread():  # the checks read each factor once: memory-bound, OpenMP only adds waits
        for m, (A, B) in _split_factors(tensors, path, meta).items():
            norms = (format_checks.frobenius(A), format_checks.frobenius(B))  # one pass over each
            if not all(math.isfinite(x) for x in norms):  # a NaN or Inf somewhere: say which factor
                check_finite(path, m, "lora_A", A)
                check_finite(path, m, "lora_B", B)
            s = format_checks.positive_number(path, f"header module_scaling[{m}]", per_module.get(m, scaling))
            format_checks.check_scale(path, m, A, B, s, norms)
            adapters[m] = delta.Adapter(A.float(), B.float(), s)
    return adapters, meta


MAGNITUDE = "lora_magnitude"


def read_magnitudes(path: Path) -> dict[str, torch.Tensor]:
    """DoRA's magnitude vectors m (out,) by module, "<module>.lora_magnitude" ({} for a plain LoRA run)."""
    tensors, _ = _lorascope_file(path)
    out = {}
    for key, t in tensors.items():
        module, _, part = key.rpartition(".")
        if part == MAGNITUDE:
            check_finite(path, module, MAGNITUDE, t)
            out[module] = t.float()
    return out


def save_delta(path: Path, deltas: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write "<module>.delta" tensors, ΔW = W_T − W_0 (out, in) fp32, with the run's header."""
    save_tensors(path, {f"{m}.delta": d.float() for m, d in deltas.items()}, metadata)


def read_delta(path: Path) -> tuple[dict[str, DenseDelta], dict[str, Any]]:
    """Dense updates by module name and the header metadata of one lorascope delta file."""
    from lorascope import delta

    tensors, meta = _lorascope_file(path)
    deltas = {}
    for key, t in tensors.items():
        module, _, part = key.rpartition(".")
        if part != "delta" or t.ndim != 2 or 0 in t.shape:
            raise LorascopeError(
                f"{path}: unexpected tensor {key!r} {tuple(t.shape)} (want <module>.delta, 2-D)"
            )
        format_checks.check_dtype(path, key, t)
        check_finite(path, module, "delta", t)
        deltas[module] = delta.DenseDelta(t.float())
    return deltas, meta


def read_update(path: Path) -> tuple[dict[str, Adapter | DenseDelta], dict[str, Any]]:
    """read_adapter or read_delta, by the file's name."""
    return read_delta(path) if Path(path).name == DELTA_FILE else read_adapter(path)
