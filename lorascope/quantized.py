"""W of a quantized checkpoint: bitsandbytes 4-bit (nf4/fp4, with or without double quantization)
and 8-bit (LLM.int8) tensors, dequantized one tensor at a time with bitsandbytes' own functions.

What transformers' save_pretrained writes for a module quantized by a BitsAndBytesConfig:

    4-bit  <m>.weight                                  uint8 (n·m/2, 1): two 4-bit codes a byte
           <m>.weight.absmax                           per-block scales (uint8 when double-quantized)
           <m>.weight.quant_map                        the 16 values of the nf4 / fp4 code
           <m>.weight.quant_state.bitsandbytes__nf4    JSON bytes: shape, blocksize, dtype, ...
           <m>.weight.nested_absmax, .nested_quant_map  the scales' own quantization (double quant)
    8-bit  <m>.weight  int8 (out, in);  <m>.SCB  float32 (out,): W = weight · SCB / 127 per row

config.json's `quantization_config` says which (`quant_method`: "bitsandbytes"); any other
quantization (GPTQ, AWQ, fp8, ...) is refused with one line naming it: `--base DIR` reads W from
the unquantized base instead.
"""

from __future__ import annotations

import logging

import torch

from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

QUANT_STATE = ".quant_state.bitsandbytes__"  # + nf4 / fp4: the packed state of a 4-bit weight
STATE_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
INT8_SCALES = "SCB"
INT8_MAX = 127.0


def describe(config: dict | None) -> str | None:
    """The quantization config.json declares, in words ("bitsandbytes 4-bit nf4, double quantization"),
    or None for an unquantized checkpoint. config: config.json as a dict."""
    q = (config or {}).get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = q.get("quant_method", "unknown")
    if method != "bitsandbytes":
        bits = f" {q['bits']}-bit" if q.get("bits") else ""
        return f"{method}{bits}"
    if q.get("load_in_4bit") or q.get("_load_in_4bit"):
        double = ", double quantization" if q.get("bnb_4bit_use_double_quant") else ""
        return f"bitsandbytes 4-bit {q.get('bnb_4bit_quant_type', 'fp4')}{double}"
    if q.get("load_in_8bit") or q.get("_load_in_8bit"):
        return "bitsandbytes 8-bit (LLM.int8)"
    return "bitsandbytes"


def layout(key: str, keys, config: dict | None, dtype: str | None = None) -> str | None:
    """How tensor `key` ("<m>.weight") is stored: "4bit", "8bit", or None for a plain W.
    dtype: its safetensors dtype ("U8", "BF16", ...). A quantization that is not bitsandbytes', or
    an integer W without the state bitsandbytes saves beside it, is refused in one line."""
    if any(k.startswith(key + QUANT_STATE) for k in _near(keys, key)):
        return "4bit"
    if key.endswith(".weight") and key.removesuffix("weight") + INT8_SCALES in keys:
        return "8bit"
    what = describe(config)
    if what is not None and not what.startswith("bitsandbytes"):
        raise LorascopeError(
            f"{key}: the checkpoint is quantized with {what}, which lorascope cannot dequantize; "
            "give the unquantized base with --base DIR"
        )
    if dtype in ("U8", "I8", "U4", "I4"):
        raise LorascopeError(
            f"{key}: stored as {dtype} without the quantization state bitsandbytes saves beside it "
            f"({QUANT_STATE}nf4/fp4, or {INT8_SCALES}): a quantized format lorascope cannot read; "
            "give the unquantized base with --base DIR"
        )
    return None


def _near(keys, key: str):
    """The keys that begin with `key` (a dict or set of keys: scanned, as few modules ask)."""
    return (k for k in keys if k.startswith(key + "."))


def state_keys(key: str, keys) -> list[str]:
    """The tensors bitsandbytes' QuantState.from_dict needs for 4-bit `key`, as stored."""
    return [
        k for k in _near(keys, key) if k.removeprefix(key + ".").split(".")[0] in (*STATE_KEYS, "quant_state")
    ]


def dequantize_4bit(packed: torch.Tensor, state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """W (out, in) in the dtype the quantization recorded, from a packed 4-bit weight and its state
    tensors ({stored key: tensor}, `state_keys`), by bitsandbytes' dequantize_4bit on the CPU."""
    functional = _bitsandbytes(key)
    stripped = {k.removeprefix(key + "."): v for k, v in state.items()}
    try:
        quant_state = functional.QuantState.from_dict(stripped, device=torch.device("cpu"))
        W = functional.dequantize_4bit(packed.contiguous(), quant_state)
    except (ValueError, KeyError, AssertionError, RuntimeError) as e:
        raise LorascopeError(f"{key}: not a bitsandbytes 4-bit weight lorascope can read ({e})") from None
    return W


def dequantize_8bit(weight: torch.Tensor, scales: torch.Tensor, key: str) -> torch.Tensor:
    """W (out, in) float32 from an LLM.int8 weight (int8 (out, in)) and its row scales SCB (out,):
    W = weight · SCB / 127, by bitsandbytes' int8_vectorwise_dequant."""
    if weight.dtype != torch.int8 or weight.ndim != 2 or scales.shape != (weight.shape[0],):
        raise LorascopeError(
            f"{key}: not a bitsandbytes 8-bit weight (int8 {tuple(weight.shape)} {weight.dtype}, "
            f"SCB {tuple(scales.shape)})"
        )
    functional = _bitsandbytes(key)
    return functional.int8_vectorwise_dequant(weight, scales.float())


def _bitsandbytes(key: str):
    try:
        import bitsandbytes.functional as functional
    except ImportError:
        raise LorascopeError(
            f"{key}: a bitsandbytes-quantized weight; `pip install bitsandbytes` to dequantize it, "
            "or give the unquantized base with --base DIR"
        ) from None
    return functional
