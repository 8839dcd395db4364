"""The one place where what a file says about an adapter is checked against its tensors.

A header (lorascope's safetensors metadata) or a PEFT adapter_config.json gives each module's rank
and scaling; the tensors give A (r, in) and B (out, r). Every number an analysis takes from them is
checked here before anything is computed: a scaling that is NaN, infinite, zero, negative or not a
number; a rank that is not a positive integer or differs from the tensors'; factors that are not
floating point, transposed or of rank 0. Each refusal is one line naming the file and the field.

A leaf: it imports only the error type, so that the run format and the PEFT reader can both use it.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.errors import LorascopeError

if TYPE_CHECKING:  # only the checks of tensors need torch, and they get tensors: reading a header does not
    import torch

# ΔW is formed in float32 (Adapter.delta_weight): a scale that overflows float32 is no update.
_F32_MAX = 3.4028234663852886e38  # float(torch.finfo(torch.float32).max)
_FLOATING = ("float16", "bfloat16", "float32", "float64")


def _fail(path: Path, why: str) -> LorascopeError:
    return LorascopeError(f"{path}: {why}")


def header_dict(path: Path, meta: Any) -> dict[str, Any]:
    """A header that is a JSON object, else one line."""
    if not isinstance(meta, dict):
        raise _fail(path, f"its metadata header is a JSON {type(meta).__name__}, not an object")
    return meta


def positive_number(path: Path, field: str, value: Any) -> float:
    """A finite number > 0 (a scaling, an α): NaN, ±Inf, 0, negatives, strings, null and booleans are
    refused. A negative α would only flip ΔW's sign, but no training writes one: it is damage."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(path, f"{field} is {value!r}; want a finite positive number")
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise _fail(path, f"{field} is {x!r}; want a finite positive number")
    return x


def positive_int(path: Path, field: str, value: Any) -> int:
    """A rank: an integer ≥ 1 (8.0 is 8; 8.7, "8", null and booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(path, f"{field} is {value!r}; want an integer of at least 1")
    if not (math.isfinite(float(value)) and float(value) == int(value) and int(value) >= 1):
        raise _fail(path, f"{field} is {value!r}; want an integer of at least 1")
    return int(value)


def format_version(path: Path, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(path, f"format_version is {value!r}; want a non-negative integer")
    return value


def check_dtype(path: Path, name: str, t: torch.Tensor) -> None:
    """Factors and updates are real floating point: integers, booleans or complex values are not an
    adapter (and converting them would silently change what is analysed)."""
    if str(t.dtype).removeprefix("torch.") not in _FLOATING:
        raise _fail(path, f"tensor {name} has dtype {str(t.dtype).removeprefix('torch.')}; want a float type")


def check_factors(path: Path, module: str, A: torch.Tensor, B: torch.Tensor, rank: int | None) -> None:
    """A (r, in) and B (out, r), floating point, r ≥ 1 and equal to `rank` (the file's, when it says)."""
    check_dtype(path, f"{module} lora_A", A)
    check_dtype(path, f"{module} lora_B", B)
    shapes = f"A {tuple(A.shape)} and B {tuple(B.shape)}"
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise _fail(path, f"module {module} has {shapes}; want A (r, in) and B (out, r)")
    if A.shape[0] == 0:
        raise _fail(path, f"module {module} has {shapes}: rank 0, no update")
    if rank is not None and A.shape[0] != rank:
        raise _fail(
            path, f"module {module} has {shapes}, rank {A.shape[0]}, but the file says rank {rank} "
            "(want A (r, in) and B (out, r): transposed factors, or a wrong rank)",
        )  # fmt: skip


def check_scale(
    path: Path,
    module: str,
    A: torch.Tensor,
    B: torch.Tensor,
    scaling: float,
    norms: tuple[float, float] | None = None,
) -> None:
    """s · ‖B‖_F · ‖A‖_F bounds ‖ΔW‖_F: where it overflows float32 (α = 1e308), ΔW is not a number.
    `norms`: (‖A‖_F, ‖B‖_F) where the caller has them (`frobenius`), so the factors are not read again."""
    norm_a, norm_b = norms if norms is not None else (frobenius(A), frobenius(B))
    bound = scaling * norm_a * norm_b
    if not bound <= _F32_MAX:
        raise _fail(
            path, f"module {module}: scaling {scaling:g} makes ΔW overflow (‖ΔW‖_F up to {bound:.3g})"
        )


def frobenius(X: torch.Tensor) -> float:
    """‖X‖_F, in X's own precision when that cannot overflow (no float64 copy of the factor), else in
    float64: float32's ‖X‖² overflows from ‖X‖ ≈ 1.8e19, fp16's far earlier. Finite exactly when every
    entry is (NaN and ±Inf propagate; finite float32 entries cannot overflow float64's sum)."""
    import torch

    if X.dtype == torch.float32:
        norm = float(torch.linalg.vector_norm(X))
        if math.isfinite(norm):
            return norm
    return float(torch.linalg.vector_norm(X.double()))
