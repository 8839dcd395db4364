"""LoRA on embeddings, convolutions and MoE expert parameters as factored ΔW = s · B A (out, in).

embedding   PEFT lora_embedding_A (r, vocab), lora_embedding_B (dim, r); its get_delta_weight is
            transpose(B_e A_e) · s, the change of the (vocab, dim) embedding weight, so
            ΔW (vocab, dim) = s · B A with B = A_eᵀ (vocab, r), A = B_eᵀ (r, dim)
convolution lora_A a conv kernel (r, in, k…), lora_B (out, r, 1…): ΔK[o, i, …] = s Σ_j B[o, j] A[j, i, …]
            (PEFT's conv get_delta_weight), i.e. the (out, in·Π k) matrix s · B.view(out, r) A.view(r, −1)
            of the kernel; W is the base kernel reshaped alike. Grouped convolutions do not
            have this form and are refused when W is read (its (out, in/groups·Π k) differs).
experts     PEFT's ParamWrapper on a 3-D parameter (E, d1, d2): lora_A (E·r, d2), lora_B (d1, E·r),
            expert e's ΔW = s · B.view(d1, r, E)[:, :, e] · A.view(E, r, d2)[e], (d1, d2) as the
            parameter stores it (PEFT's einsum "o r e, e r i -> e o i"), named "<module>.<e>.<param>"
"""

from __future__ import annotations

import re

import torch

from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter

# "<module>.<e>.<param>": one expert's slice of a 3-D parameter "<module>.<param>" (E, d1, d2).
EXPERT_NAME = re.compile(r"(?P<module>.+)\.(?P<index>\d+)\.(?P<param>[^.]+)")

CONV_NOTE = "convolution: ΔW is the (out, in·k·k) matrix of the kernel"


def embedding_adapter(A_e: torch.Tensor, B_e: torch.Tensor, scaling: float) -> Adapter:
    """ΔW (vocab, dim) of lora_embedding_A (r, vocab), lora_embedding_B (dim, r): roles transposed."""
    return Adapter(B_e.T.float().contiguous(), A_e.T.float().contiguous(), float(scaling))


def conv_adapter(A: torch.Tensor, B: torch.Tensor, scaling: float, module: str) -> Adapter:
    """ΔW (out, in·Π k) of conv factors A (r, in, k…), B (out, r, 1…)."""
    if any(d != 1 for d in B.shape[2:]):
        raise LorascopeError(f"module {module}: lora_B {tuple(B.shape)} is not a 1×1 kernel")
    r = A.shape[0]
    return Adapter(A.reshape(r, -1).float(), B.reshape(B.shape[0], r).float(), float(scaling))


def expert_adapters(
    module: str, param: str, A: torch.Tensor, B: torch.Tensor, rank: int, scaling: float
) -> dict[str, Adapter]:
    """One Adapter per expert of PEFT's ParamWrapper factors A (E·r, d2), B (d1, E·r)."""
    if A.shape[0] % rank or A.shape[0] != B.shape[1]:
        raise LorascopeError(
            f"module {module}.{param}: lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)} are not "
            f"E·r = E·{rank}"
        )
    n = A.shape[0] // rank
    A_e = A.reshape(n, rank, A.shape[1])
    B_e = B.reshape(B.shape[0], rank, n)
    return {
        f"{module}.{e}.{param}": Adapter(
            A_e[e].float().contiguous(), B_e[:, :, e].float().contiguous(), scaling
        )
        for e in range(n)
    }


def flatten_kernel(W: torch.Tensor) -> torch.Tensor:
    """A conv kernel (out, in, k…) as its (out, in·Π k) matrix."""
    return W.reshape(W.shape[0], -1)
