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

The other families (`lorascope.families`): "<module>.lora_magnitude_vector" (use_dora) makes the
module a DoRA ΔW; init_lora_weights pissa / olora / ... a shifted ΔW s·(B A − B0 A0) from the original
W; "<module>.lora_embedding_A/B" an embedding's (vocab, dim) ΔW; conv-kernel factors the (out, in·k·k)
ΔW of the kernel; factors of a `target_parameters` module ("<module>[.base_layer…].lora_A.weight",
one ParamWrapper per parameter) one ΔW per expert. Variants lorascope does not read are refused
(see `_check`).
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
from lorascope.families import layouts, peft_kinds
from lorascope.lora import lora_scaling

log = logging.getLogger(__name__)

CONFIG_FILE = run_format.PEFT_CONFIG_FILE  # "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PREFIX = "base_model.model."

# Config fields whose forward is not h = W x + s · B A x and that lorascope does not read.
_VARIANTS = {
    "use_qalora": "QA-LoRA pools the input before A",
    "arrow_config": "Arrow routes between several LoRA experts per token",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "alora_invocation_tokens": "aLoRA applies the update only after its invocation tokens",
    "velora_config": "VeLoRA compresses activations inside the update",
    "monteclora_config": "MonteCLoRA samples its factors",
    "kasa_config": "KaSA adds a singular-value-scaled term",
    "layer_replication": "layer_replication changes the base model's layer structure",
}

# "<module>.lora_A.weight", "<module>.lora_A.<adapter>.weight", "<module>.lora_embedding_A",
# "<module>.lora_magnitude_vector[.<adapter>.weight]": the part names PEFT saves.
_FACTOR_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?"
)
_PART = {
    "lora_A": "A",
    "lora_B": "B",
    "lora_embedding_A": "EA",
    "lora_embedding_B": "EB",
    "lora_magnitude_vector": "M",
}
WRAPPED = ".base_layer"  # PEFT nests one ParamWrapper per targeted parameter of a module


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
    if config.get("loftq_config") or str(config.get("init_lora_weights", "")).lower() == "loftq":
        raise _fail(
            path,
            "LoftQ initialisation quantized the base weights, so the change from the base model cannot be "
            "reconstructed; convert it to plain LoRA first (PEFT: save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...))",
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
    """{module: {part: tensor}} from PEFT key names (parts A, B, EA, EB, M), and the other tensors' names.

    A module saved by a nested ParamWrapper keeps its ".base_layer" segments here."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    names: set[str] = set()
    other = []
    for key, t in tensors.items():
        m = _FACTOR_KEY.fullmatch(key.removeprefix(PREFIX))
        if m is None:
            other.append(key)
            continue
        adapter = m["adapter"] if m["adapter"] != "weight" else None
        names.add(adapter or "")
        parts.setdefault(m["module"], {})[_PART[m["part"]]] = t
    if len(names) > 1:
        raise _fail(path, f"holds several adapters ({', '.join(sorted(n or '<unnamed>' for n in names))})")
    if not any({"A", "B"} & set(p) or {"EA", "EB"} & set(p) for p in parts.values()):
        raise _fail(path, "holds no LoRA factors (no <module>.lora_A.weight / .lora_B.weight tensors)")
    for module, p in parts.items():
        factors = [k for k in ("A", "B", "EA", "EB") if k in p]
        if factors not in (["A", "B"], ["EA", "EB"]):
            raise _fail(
                path, f"module {module} has only {', '.join(f'lora_{k}' for k in factors) or 'a magnitude'}"
            )
        A, B = (p["A"], p["B"]) if "A" in p else (p["EA"], p["EB"])
        if A.shape[0] != B.shape[1] or A.ndim != B.ndim or A.ndim not in (2, 3, 4, 5):
            raise _fail(
                path, f"module {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} differ in r"
            )
        flat_A, flat_B = A.flatten(1), B.flatten(1)  # a conv kernel as its matrix
        format_checks.check_factors(path, module, flat_A, flat_B, None)  # dtypes, rank 0; r below
        run_format.check_finite(path, module, "lora_A", A)
        run_format.check_finite(path, module, "lora_B", B)
        if "M" in p:
            run_format.check_finite(path, module, "lora_magnitude_vector", p["M"])
    return parts, other


def load_peft_run(
    path: str | Path, *, init_dir: str | Path | None = None, plain: bool = False
) -> run_format.Run:
    """A PEFT LoRA adapter folder as a `Run` (kind "peft"): ΔW_m = s_m · B_m A_m, (out, in), or the
    module's family kind (`lorascope.families`): DoRA, a shifted init (A0, B0 from `init_dir`, else
    the folder's initial_adapter/, else recomputed from W), embeddings, convolutions, MoE experts.
    plain: the factors as saved, without the DoRA / shifted-init reading (for an initial adapter)."""
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
    base = peft_kinds.BaseWeights(
        config.get("base_model_name_or_path"),
        "its ΔW needs the base model's W",
        path,
        bool(config.get("fan_in_fan_out", False)),
    )
    adapters, module_alpha = {}, {}
    for saved, p in sorted(factors.items()):
        module = saved.replace(WRAPPED, "")
        param = (
            peft_kinds.expert_param(module, p, config, base, weights)
            if "A" in p and p["A"].ndim == 2
            else None
        )
        A = p["A"] if "A" in p else p["EA"]
        r_key, a_key = pattern_keys(rank_pattern, alpha_pattern, module, config.get("peft_version"))
        r_config = (
            format_checks.positive_int(config_path, f"rank_pattern[{r_key!r}]", rank_pattern[r_key])
            if r_key is not None
            else r0
        )
        r = A.shape[0] if param is None else r_config
        if r != r_config or A.shape[0] % r_config:
            # PEFT itself would refuse to load this; a mismatch also means α may be resolved wrongly.
            raise _fail(weights, f"module {module} has rank {A.shape[0]} but {CONFIG_FILE} says r={r_config}")
        alpha = (
            format_checks.positive_number(config_path, f"alpha_pattern[{a_key!r}]", alpha_pattern[a_key])
            if a_key is not None
            else alpha0
        )
        scaling = lora_scaling(alpha, r, rslora)
        if param is not None:
            experts = layouts.expert_adapters(module, param, p["A"], p["B"], r, scaling)
            adapters.update(experts)
            module_alpha.update(dict.fromkeys(experts, alpha))
            continue
        adapter = peft_kinds.factored(module, p, scaling, weights)
        format_checks.check_scale(weights, module, adapter.A, adapter.B, scaling)
        module_alpha[module] = alpha
        if "M" in p and not plain:
            if "A" not in p or p["A"].ndim != 2:
                raise _fail(
                    weights, f"module {module}: DoRA on an embedding or convolution is not read; Linear only"
                )
            base.why = "it is a DoRA adapter (use_dora), whose ΔW needs the base model's W"
            base.open()
            adapter = peft_kinds.dora_update(module, adapter, p["M"], base)
        adapters[module] = adapter
    if config.get("use_dora") and not plain and not any("M" in p for p in factors.values()):
        raise _fail(weights, "use_dora is set (DoRA), but the file holds no lora_magnitude_vector")
    init = peft_kinds.shifting_init(config)
    if init is not None and not plain:
        base.why = f"{peft_kinds.init_family(init)} initialisation moved W, so ΔW needs the original W"
        adapters = peft_kinds.shifted_updates(
            adapters, init, base, path, init_dir, lambda folder: load_peft_run(folder, plain=True).adapters
        )

    bias = config.get("bias", "none")
    if bias != "none" or config.get("lora_bias"):
        # The bias terms shift outputs but are not part of the weight update ΔW we analyse.
        log.warning(
            "%s: bias=%r, lora_bias=%r: trained bias terms are ignored; ΔW = s·B·A is read exactly",
            path,
            bias,
            config.get("lora_bias", False),
        )
    convs = [m for m, q in factors.items() if "A" in q and q["A"].ndim > 2]
    if convs:  # said in every command's output: the ΔW analysed is a reshaping of the kernel's change
        log.warning(
            "%s: %d convolution module(s), e.g. %s: %s", path, len(convs), convs[0], layouts.CONV_NOTE
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
        "rank": max(a.factors.rank if hasattr(a, "factors") else a.rank for a in adapters.values()),
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
        "module_scaling": {m: getattr(a, "factors", a).scaling for m, a in adapters.items()},
        "ignored_tensors": other,
        "convolutions": sorted(c.replace(WRAPPED, "") for c in convs),
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
    if run.meta.get("dora") or run.meta.get("init") in peft_kinds.SHIFTING_INITS:
        raise LorascopeError(
            f"{run.path}: a DoRA or {run.meta.get('init')}-initialised run is not exported: its ΔW is not "
            "s·B·A of the base model"
        )
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
