"""PEFT LoRA adapter folders: read one as a lorascope `Run`, write a run as one.

    <folder>/adapter_config.json          LoraConfig as JSON: r, lora_alpha, use_rslora, rank_pattern, ...
    <folder>/adapter_model.safetensors    "base_model.model.<module>.lora_A.weight" (r, in)
                                          "base_model.model.<module>.lora_B.weight" (out, r)

PEFT's lora_A / lora_B are nn.Linear weights, (r, in) and (out, r), also when the target is
GPT-2's Conv1D: its forward is h = base(x) + s · B (A x), so the change of the linear map in
nn.Linear's (out, in) layout is always ΔW = s · B A, exactly lorascope's. `fan_in_fan_out`
only tells PEFT to transpose ΔW to (in, out) before adding it to a Conv1D's stored weight.

Per module, s = α_m / r_m (α_m / √r_m with use_rslora): r_m is the tensor's rank, and α_m is
`alpha_pattern[k]` for the first key k (in file order) for which `(.*\\.)?(k)$` matches the
module path, else `lora_alpha`; `rank_pattern` works the same way and must agree with the shapes.
Files saved by older PEFT versions keep the adapter name (".lora_A.default.weight"); both read.
Adapters whose ΔW is not s · B A of a base model left unchanged are refused (see `_check`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lorascope import format_checks, run_format
from lorascope.errors import LorascopeError
from lorascope.lora import lora_scaling

log = logging.getLogger(__name__)

CONFIG_FILE = run_format.PEFT_CONFIG_FILE  # "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PREFIX = "base_model.model."

# Inits that write a function of W into A and B and subtract B A from W: s · B A is then not the
# change of the published base model (the base was modified; PEFT's docs say to convert first).
_BASE_CHANGING_INITS = {
    "pissa": "PiSSA",
    "olora": "OLoRA",
    "corda": "CorDA",
    "loftq": "LoftQ",
    "lora_ga": "LoRA-GA",
}
# Config fields whose forward is not h = W x + s · B A x.
_VARIANTS = {
    "use_dora": "DoRA rescales each column of W + s·B·A by a learned magnitude",
    "use_qalora": "QA-LoRA pools the input before A",
    "arrow_config": "Arrow routes between several LoRA experts per token",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "alora_invocation_tokens": "aLoRA applies the update only after its invocation tokens",
    "velora_config": "VeLoRA compresses activations inside the update",
    "monteclora_config": "MonteCLoRA samples its factors",
    "kasa_config": "KaSA adds a singular-value-scaled term",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not a linear-layer update",
    "layer_replication": "layer_replication changes the base model's layer structure",
}

_FACTOR_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")


def _fail(path: Path, why: str) -> LorascopeError:
    return LorascopeError(f"{path}: {why}")


def read_peft_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json as a dict; a clear error if it is not a JSON object."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(run_format.read_text(path))
    except json.JSONDecodeError as e:
        raise _fail(path, f"not a readable JSON file ({e})") from None
    if not isinstance(config, dict):
        raise _fail(path, "holds no JSON object")
    return config


def _check(config: dict[str, Any], path: Path) -> None:
    """Refuse adapters whose plain ΔW = s · B A would not be the change they make to the base model."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise _fail(path, f"peft_type is {config.get('peft_type')!r}; lorascope reads LoRA adapters only")
    init = str(config.get("init_lora_weights", True)).lower()
    for prefix, name in _BASE_CHANGING_INITS.items():
        if init.startswith(prefix) or (prefix == "loftq" and config.get("loftq_config")):
            raise _fail(
                path,
                f"{name} initialisation (init_lora_weights={config.get('init_lora_weights')!r}) changed the "
                "base weights, so s·B·A is not the change from the base model; convert it to plain LoRA "
                "first (PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...))",
            )
    for key, why in _VARIANTS.items():
        if config.get(key):
            raise _fail(path, f"{key} is set: {why}, so the plain ΔW = s·B·A would be wrong")


def pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """The first key of a PEFT rank_pattern/alpha_pattern that matches `module`, as PEFT picks it."""
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as e:
            raise LorascopeError(
                f"pattern {key!r} in adapter_config.json is not a valid regex: {e}"
            ) from None
    return None


# PEFT up to this version resolved rank_pattern and alpha_pattern with one key for both (PEFT issue #2194).
LAST_SHARED_PATTERN_KEY = (0, 13, 2)


def pattern_keys(
    rank_pattern: dict[str, Any], alpha_pattern: dict[str, Any], module: str, peft_version: str | None = None
) -> tuple[str | None, str | None]:
    r"""(key of rank_pattern, key of alpha_pattern) that set `module`'s r and α, None for the default,
    as the PEFT that saved the adapter resolved them.

    PEFT ≤ 0.13.2 took the first key of rank_pattern then alpha_pattern (one list) that matched
    `.*\.{key}$`, and looked both r and α up under that one key: where an alpha_pattern key came
    first (or matched where no rank key did), r fell back to the default, and the reverse (#2194);
    a key naming the whole module matched only exactly. Later PEFT (and an adapter that records no
    `peft_version`) resolve each pattern on its own (`pattern_key`)."""
    if not _shares_pattern_key(peft_version):
        return pattern_key(rank_pattern, module), pattern_key(alpha_pattern, module)
    key = module
    for candidate in [*rank_pattern, *alpha_pattern]:
        try:
            if re.match(rf".*\.{candidate}$", module):
                key = candidate
                break
        except re.error as e:
            raise LorascopeError(
                f"pattern {candidate!r} in adapter_config.json is not a valid regex: {e}"
            ) from None
    return (key if key in rank_pattern else None), (key if key in alpha_pattern else None)


def _shares_pattern_key(peft_version: str | None) -> bool:
    """Whether the adapter's `peft_version` ("0.13.2", "0.13.0.dev0", "0.17.1@<commit>") is one that
    resolved both patterns with one key; absent or unreadable: no (today's rule)."""
    if not peft_version:
        return False
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(peft_version))
    if match is None:
        log.warning(
            "peft_version %r is not a version number: patterns resolved by today's rule", peft_version
        )
        return False
    return tuple(int(g or 0) for g in match.groups()) <= LAST_SHARED_PATTERN_KEY


def _pattern(config: dict[str, Any], field: str, path: Path) -> dict[str, Any]:
    """rank_pattern / alpha_pattern: a JSON object (absent or null: none)."""
    value = config.get(field) or {}
    if not isinstance(value, dict):
        raise _fail(path, f"{field} is {value!r}; want a JSON object of module pattern to value")
    return value


def _split_keys(tensors: dict[str, torch.Tensor], path: Path):
    """{module: (A, B)} from PEFT key names, and the names of the other tensors (biases, saved modules)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    names: set[str] = set()
    other = []
    for key, t in tensors.items():
        if "lora_embedding_" in key:
            raise _fail(path, f"{key}: LoRA on an embedding layer; lorascope analyses linear layers only")
        if "lora_magnitude_vector" in key:
            raise _fail(path, f"{key}: a DoRA magnitude vector; DoRA's ΔW is not s·B·A")
        m = _FACTOR_KEY.fullmatch(key.removeprefix(PREFIX))
        if m is None:
            other.append(key)
            continue
        if t.ndim != 2:
            raise _fail(path, f"{key} has shape {tuple(t.shape)}: a LoRA on a conv layer, not a linear one")
        names.add(m["adapter"] or "")
        pairs.setdefault(m["module"], {})[m["part"]] = t
    if len(names) > 1:
        raise _fail(path, f"holds several adapters ({', '.join(sorted(n or '<unnamed>' for n in names))})")
    if not pairs:
        raise _fail(path, "holds no LoRA factors (no <module>.lora_A.weight / .lora_B.weight tensors)")
    out = {}
    for module, p in pairs.items():
        if set(p) != {"A", "B"}:
            raise _fail(path, f"module {module} has only lora_{''.join(p)}")
        A, B = p["A"], p["B"]
        if A.shape[0] != B.shape[1]:
            raise _fail(
                path, f"module {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} differ in r"
            )
        format_checks.check_factors(path, module, A, B, None)  # dtypes, rank 0; r against the config below
        run_format.check_finite(path, module, "lora_A", A)
        run_format.check_finite(path, module, "lora_B", B)
        out[module] = (A.float(), B.float())
    return out, other


def load_peft_run(path: str | Path) -> run_format.Run:
    """A PEFT LoRA adapter folder as a `Run` (kind "peft"): ΔW_m = s_m · B_m A_m, (out, in)."""
    path = Path(path)
    config = read_peft_config(path)
    _check(config, path / CONFIG_FILE)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        if (path / PICKLE_FILE).is_file():
            raise _fail(
                path / PICKLE_FILE,
                "is a pickle file, which lorascope never loads; convert it to adapter_model.safetensors "
                "(PeftModel.from_pretrained(...).save_pretrained(folder, safe_serialization=True))",
            )
        raise _fail(path, f"has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    factors, other = _split_keys(run_format.read_tensors(weights)[0], weights)

    config_path = path / CONFIG_FILE
    r0 = format_checks.positive_int(config_path, "r", config.get("r", 8))  # PEFT's defaults when absent
    alpha0 = format_checks.positive_number(config_path, "lora_alpha", config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    rank_pattern = _pattern(config, "rank_pattern", config_path)
    alpha_pattern = _pattern(config, "alpha_pattern", config_path)
    adapters, module_alpha = {}, {}
    for module, (A, B) in sorted(factors.items()):
        r = A.shape[0]
        r_key, a_key = pattern_keys(rank_pattern, alpha_pattern, module, config.get("peft_version"))
        r_config = (
            format_checks.positive_int(config_path, f"rank_pattern[{r_key!r}]", rank_pattern[r_key])
            if r_key is not None
            else r0
        )
        if r != r_config:
            # PEFT itself would refuse to load this; a mismatch also means α may be resolved wrongly.
            raise _fail(weights, f"module {module} has rank {r} but {CONFIG_FILE} says r={r_config}")
        alpha = (
            format_checks.positive_number(config_path, f"alpha_pattern[{a_key!r}]", alpha_pattern[a_key])
            if a_key is not None
            else alpha0
        )
        module_alpha[module] = alpha
        scaling = lora_scaling(alpha, r, rslora)
        format_checks.check_scale(weights, module, A, B, scaling)
        adapters[module] = run_format.Adapter(A, B, scaling)

    bias = config.get("bias", "none")
    if bias != "none" or config.get("lora_bias"):
        # The bias terms shift outputs but are not part of the weight update ΔW we analyse.
        log.warning(
            "%s: bias=%r, lora_bias=%r: trained bias terms are ignored; ΔW = s·B·A is read exactly",
            path,
            bias,
            config.get("lora_bias", False),
        )
    if other:
        log.warning(
            "%s: %d tensors besides the LoRA factors (biases, modules_to_save, trainable tokens) are "
            "ignored, e.g. %s",
            weights,
            len(other),
            other[0],
        )
    scaling = lora_scaling(alpha0, r0, rslora)
    meta = {
        "format": "peft",
        "rank": max(a.rank for a in adapters.values()),
        "alpha": alpha0,
        "scaling": scaling,
        "base_model": config.get("base_model_name_or_path"),
        "targets": config.get("target_modules"),
        "rslora": rslora,
        "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
        "task_type": config.get("task_type"),
        "peft_type": config.get("peft_type"),
        "init": config.get("init_lora_weights", True),
        "module_alpha": module_alpha,
        "module_scaling": {m: a.scaling for m, a in adapters.items()},
        "ignored_tensors": other,
    }
    return run_format.Run(
        path=path,
        adapters=adapters,
        meta=meta,
        init=None,
        config=config,
        summary={"status": "complete"},
        kind="peft",
    )


def _number(x: float) -> int | float:
    """x as an int when it is one up to rounding: α = s · r recomputed from s should read 16, not 15.99..."""
    return int(round(x)) if abs(x - round(x)) <= 1e-9 * max(1.0, abs(x)) else x


def export_peft(
    run: run_format.Run,
    out_dir: str | Path,
    *,
    fan_in_fan_out: bool | None = None,
    task_type: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `run` as a PEFT LoRA folder that `PeftModel.from_pretrained(base, out_dir)` loads.

    Per module, PEFT's α_m = s_m · r_m (s_m · √r_m with rsLoRA) reproduces the run's scaling s_m;
    the most common (r, α) become `r`/`lora_alpha`, the others go to rank_pattern/alpha_pattern
    keyed by full module path. target_modules lists the full module paths, so PEFT adapts exactly
    these modules. fan_in_fan_out (True for GPT-2 Conv1D) is not knowable from the factors: pass it,
    or it comes from the run's meta, else False (PEFT then corrects it for Conv1D with a warning).
    Returns out_dir.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    if not run.adapters:
        raise LorascopeError(f"{run.path}: run has no adapters to export")
    if run.method != "lora":
        raise LorascopeError(
            f"{run.path}: a {run.method} fine-tuning run has a dense ΔW, not LoRA factors; a PEFT LoRA "
            "adapter cannot hold it"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise LorascopeError(f"{out_dir}: is a file; give a folder to write the PEFT adapter into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise LorascopeError(
            f"{out_dir}: folder is not empty; choose another, or write into it with `lorascope export "
            "--overwrite` (overwrite=True from Python)"
        )
    rslora = bool(run.meta.get("rslora", False))
    if fan_in_fan_out is None:
        fan_in_fan_out = bool(run.meta.get("fan_in_fan_out", False))

    rank, alpha, tensors = {}, {}, {}
    for m, a in sorted(run.adapters.items()):
        rank[m] = a.rank
        alpha[m] = _number(a.scaling * (math.sqrt(a.rank) if rslora else a.rank))
        tensors[f"{PREFIX}{m}.lora_A.weight"] = a.A.detach().float().cpu().contiguous()
        tensors[f"{PREFIX}{m}.lora_B.weight"] = a.B.detach().float().cpu().contiguous()
    r0 = Counter(rank.values()).most_common(1)[0][0]
    alpha0 = Counter(alpha.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA",
        "task_type": task_type if task_type is not None else run.meta.get("task_type"),
        "base_model_name_or_path": run.meta.get("base_model"),
        "r": r0,
        "lora_alpha": alpha0,
        "use_rslora": rslora,
        # Full paths as pattern keys: each matches only its own module, also in PEFT versions
        # that look the key up verbatim instead of as a regex.
        "rank_pattern": {m: r for m, r in rank.items() if r != r0},
        "alpha_pattern": {m: a for m, a in alpha.items() if a != alpha0},
        "target_modules": sorted(run.adapters),
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    # Weights first, config last: a folder is taken for a PEFT adapter by its adapter_config.json.
    out_dir.mkdir(parents=True, exist_ok=True)
    data = save(tensors, metadata={"format": "pt"})  # bytes written by atomic_write: mode as the umask says
    run_format.atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: tmp.write_bytes(data))
    text = json.dumps(config, indent=2) + "\n"
    run_format.atomic_write(out_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return out_dir
