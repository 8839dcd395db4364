"""The LoRA core: one wrapper layer and the function that attaches it.

    h = W x + s · B (A (dropout(x)))        A: (r, in), B: (out, r), s = α / r  (α / √r with rsLoRA)

DoRA (dora=True, Liu et al. 2024, as PEFT): W' = m ⊙ (W + s·B A)/‖W + s·B A‖ per output unit, with
the trainable magnitude m (out,) starting at ‖W‖ and the norm detached from the gradient (the
paper's Sec. 4.3). Inits that move W (pissa, milora, olora; `families.shifted.initial_factors`):
A0, B0 from W's SVD / QR and W ← W − s·B0 A0, so that the model starts unchanged; the run's ΔW is
then s·(B A − B0 A0) from the original W, which `original_weight()` gives back.

W keeps the layout of the wrapped module; everything this module hands out
(`delta_weight()`, `base_weight()`) is in nn.Linear's (out, in) layout, also for
GPT-2's Conv1D, which stores (in, out). W is never modified except by an explicit
`merge()`, which `unmerge()` undoes, and by a shifting init, once, when the layer is built.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lorascope.config import LORA_INITS
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

INITS = LORA_INITS  # kaiming, gaussian, pissa, milora, olora: named in the config schema
SHIFTING = ("pissa", "milora", "olora")  # the inits that move W (families.shifted)


def _conv1d_types() -> tuple[type, ...]:
    """GPT-2's Conv1D, which stores its weight as (in, out)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but the core does not need it
        return ()
    return (Conv1D,)


def is_linear(module: nn.Module) -> bool:
    """A module LoRA can wrap: nn.Linear, or GPT-2's Conv1D."""
    return isinstance(module, (nn.Linear, *_conv1d_types()))


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a module LoRA wraps: Conv1D stores its weight (in, out); nn.Linear's from its
    attributes, not its weight, which bitsandbytes stores packed ((n, 1) for 4 bits)."""
    if isinstance(module, _conv1d_types()):
        n_in, n_out = module.weight.shape
        return n_out, n_in
    return module.out_features, module.in_features


def is_quantized_linear(module: nn.Module) -> bool:
    """A bitsandbytes Linear4bit / Linear8bitLt (subclasses of nn.Linear with a packed weight)."""
    return type(module).__module__.startswith("bitsandbytes") and isinstance(module, nn.Linear)


def dequantize(module: nn.Module) -> torch.Tensor:
    """W (out, in) of a bitsandbytes layer in float32, by bitsandbytes' own dequantization."""
    import bitsandbytes.functional as F

    w = module.weight
    if getattr(w, "quant_state", None) is not None:  # 4-bit: nf4 / fp4 blocks with their absmax
        return F.dequantize_4bit(w.data, w.quant_state).float()
    if getattr(w, "SCB", None) is not None:  # int8: one absmax per output row
        return F.int8_vectorwise_dequant(w.data, w.SCB).float()
    return w.float()


def lora_scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """s = α / r, or α / √r for rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoRALinear(nn.Module):
    """A frozen linear map W plus the trainable low-rank update s · B A.

    `base` is an nn.Linear (weight (out, in)) or a transformers Conv1D (weight (in, out)).
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
        generator: torch.Generator | None = None,
        zero: str = "B",
        dora: bool = False,
    ):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise LorascopeError(f"rank must be a positive integer, got {rank!r}")
        if init not in INITS:
            raise LorascopeError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
        if not 0.0 <= dropout < 1.0:
            raise LorascopeError(f"dropout must be in [0, 1), got {dropout!r}")
        if zero not in ("A", "B"):
            raise LorascopeError(f"zero must name the factor that starts at 0, A or B, got {zero!r}")
        self.base = base
        self.fan_in_fan_out = isinstance(base, _conv1d_types())
        if not is_linear(base):
            raise LorascopeError(f"LoRA wraps nn.Linear or Conv1D, not {type(base).__name__}")
        self.out_features, self.in_features = linear_shape(base)
        self.rank = rank
        self.alpha = float(alpha)
        self.rslora = rslora
        self.init = init
        self.zero = zero
        self.scaling = lora_scaling(self.alpha, rank, rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Factors stay in fp32 whatever the base dtype: they are what we analyse.
        device = base.weight.device
        self.A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        self.B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        self.dora = bool(dora)
        if self.dora and init in SHIFTING:
            raise LorascopeError(
                f"DoRA with init {init} is not supported: choose lora.dora=false or another init"
            )
        # A0, B0 of a shifting init (W holds W − s·B0 A0), kept to give the original W back: r·(in + out).
        self.register_buffer("A0", None)
        self.register_buffer("B0", None)
        self.reset_parameters(generator)
        if self.dora:
            if self.quantized:
                raise LorascopeError(
                    "DoRA (lora.dora=true) needs W in full precision; this base is quantized"
                )
            with torch.no_grad():
                self.magnitude = nn.Parameter(self._norm().clone())
        self.merged = False

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A from the chosen init and B = 0 (or, with zero="A", B random and A = 0): ΔW = 0 at step 0.

        The random factor is drawn on the CPU from `generator` (torch's global stream if None) and
        then copied to its device, so that one generator seed gives the same start on every device."""
        if self.init in SHIFTING:
            self._shift()
            return
        random_factor, zero_factor = (self.A, self.B) if self.zero == "B" else (self.B, self.A)
        X = torch.empty(random_factor.shape)
        if self.init == "kaiming":
            # PEFT's and loralib's default for A: U(-1/√fan_in, 1/√fan_in), fan_in = in (r for B).
            nn.init.kaiming_uniform_(X, a=math.sqrt(5), generator=generator)
        else:
            # The paper's "random Gaussian": N(0, σ² = 1/r).
            nn.init.normal_(X, std=1.0 / math.sqrt(self.rank), generator=generator)
        random_factor.copy_(X)
        nn.init.zeros_(zero_factor)

    @torch.no_grad()
    def _shift(self) -> None:
        """A, B ← A0, B0 of the init, computed from the original W; W ← W − s·B0 A0 (once)."""
        from lorascope.families.shifted import initial_factors

        if self.quantized:
            raise LorascopeError(f"init {self.init} needs W in full precision; this base is quantized")
        if self.zero != "B":
            raise LorascopeError(f"init {self.init} sets both A and B: it cannot train against a frozen B")
        W = self.original_weight().float()
        A0, B0 = initial_factors(W.cpu(), self.init, self.rank, self.scaling)
        self.A.copy_(A0)
        self.B.copy_(B0)
        if self.A0 is not None:  # reset again: undo the previous shift first
            self.base_weight().add_((self.scaling * (self.B0 @ self.A0)).to(self.base.weight.dtype))
        self.A0, self.B0 = A0.to(self.A.device), B0.to(self.A.device)
        self.base_weight().sub_((self.scaling * (self.B0 @ self.A0)).to(self.base.weight.dtype))

    def original_weight(self) -> torch.Tensor:
        """The pre-trained W (out, in): the base weight, plus s·B0 A0 where a shifting init moved it."""
        W = self.base_weight()
        if self.A0 is None:
            return W
        return W.float() + self.scaling * (self.B0 @ self.A0)

    def _norm(self) -> torch.Tensor:
        """‖W + s·B A‖ per output unit (out,), float32: DoRA's column norm (PEFT's get_weight_norm)."""
        V = self.base_weight().float() + self.scaling * (self.B @ self.A)
        return torch.linalg.vector_norm(V, dim=1)

    @property
    def quantized(self) -> bool:
        """Whether W is stored quantized by bitsandbytes (QLoRA's 4-bit or LLM.int8())."""
        return is_quantized_linear(self.base)

    def base_weight(self) -> torch.Tensor:
        """W as (out, in), a view of the base layer's weight (a dequantized copy for a quantized base)."""
        if self.quantized:
            return dequantize(self.base)
        w = self.base.weight
        return w.T if self.fan_in_fan_out else w

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B A, (out, in): the LoRA branch (with DoRA, `dora_weight()` − W is the change)."""
        return self.scaling * (self.B @ self.A)

    def dora_weight(self) -> torch.Tensor:
        """DoRA's W' = m ⊙ (W + s·B A)/‖W + s·B A‖, (out, in) float32."""
        V = self.base_weight().float() + self.delta_weight()
        return (self.magnitude / torch.linalg.vector_norm(V, dim=1))[:, None] * V

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW in place. The forward pass then skips the low-rank branch."""
        if self.merged:
            raise RuntimeError("already merged")
        if self.dora:
            raise LorascopeError("merge() of a DoRA layer is not supported: use dora_weight()")
        if self.quantized:
            raise LorascopeError("merge() needs W in full precision; this base is quantized")
        self.base_weight().add_(self.delta_weight().to(self.base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW: undoes `merge()` (exact up to floating-point rounding)."""
        if not self.merged:
            raise RuntimeError("not merged")
        self.base_weight().sub_(self.delta_weight().to(self.base.weight.dtype))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        x = self.dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast the matmul picks its dtype
            x = x.to(self.A.dtype)
        h = x @ self.A.T  # (..., r)
        lora = self.scaling * (h @ self.B.T)
        if not self.dora:
            return y + lora.to(y.dtype)
        # PEFT's DoRA forward: (m/‖V‖ − 1) · W x + m/‖V‖ · s·B A x, ‖V‖ detached (the paper's Sec. 4.3).
        scale = self.magnitude / self._norm().detach()
        bias = self.base.bias
        wx = y - bias if bias is not None else y
        return y + ((scale - 1) * wx.to(scale.dtype) + scale * lora).to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, rslora={self.rslora}, dora={self.dora}"
        )


def matches(name: str, targets: str | Sequence[str]) -> bool:
    """PEFT's convention: a string is a regex on the full name, a list holds name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def init_seed(seed: int, rank: int, module: str) -> int:
    """The seed of one module's A0: a hash of (seed, rank, module name).

    Runs of different ranks or seeds thus start from independent A0 (a shared start would make φ
    between them high for reasons training did not cause), one (seed, rank) always starts the same,
    and adding a target module leaves the other modules' A0 unchanged."""
    digest = hashlib.sha256(f"lorascope-A0:{seed}:{rank}:{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _targets_text(targets: str | Sequence[str]) -> str:
    return repr(targets) if isinstance(targets, str) else "[" + ", ".join(targets) + "]"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _check_rank(model: nn.Module, names: list[str], rank: int, allow: bool) -> None:
    """Refuse (or with `allow`, warn about) a rank above min(in, out) of a target (`linear_shape`)."""
    widths = {n: min(linear_shape(model.get_submodule(n))) for n in names}
    narrow = {n: w for n, w in widths.items() if isinstance(rank, int) and rank > w}
    if not narrow:
        return
    name, width = next(iter(narrow.items()))
    what = f"rank {rank} exceeds min(in, out) of {len(narrow)} target(s), e.g. {name} ({width})"
    if not allow:
        raise LorascopeError(
            f"{what}: ΔW there has rank ≤ {width}; choose rank ≤ {min(narrow.values())}, or set "
            "lora.allow_rank_above_dim=true"
        )
    log.warning("%s: ΔW there has rank ≤ %d", what, width)


def _check_not_trainable(model: nn.Module, names: list[str], trainable: list[str]) -> None:
    """A target inside a module that trains whole (the head) would be trained twice, as W and as A, B."""
    whole = [n for n, _ in model.named_modules() if n and trainable and matches(n, trainable)]
    inside = [t for t in names if any(t == w or t.startswith(w + ".") for w in whole)]
    if inside:
        raise LorascopeError(
            f"target {inside[0]} is in {_targets_text(trainable)}, which trains whole (the task's head); "
            "choose targets in the base model (e.g. lora.targets=[query,value])"
        )


def add_lora(
    model: nn.Module,
    targets: str | Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    init: str = "kaiming",
    rslora: bool = False,
    trainable: Iterable[str] = (),
    seed: int | None = None,
    zero: str = "B",
    allow_rank_above_dim: bool = False,
    dora: bool = False,
) -> dict[str, LoRALinear]:
    """Wrap every linear module whose name matches `targets` in a LoRALinear.

    Freezes every base parameter; A and B, and the parameters of modules whose
    names match `trainable` (suffixes, e.g. ["classifier"]), stay trainable.
    With `seed`, each module's A0 comes from its own generator seeded by `init_seed(seed, rank, name)`
    (torch's global random stream is left untouched); without it, from the global stream in model
    order, as nn.init does. `zero` names the factor that starts at 0: "B" (the paper's, PEFT's), or
    "A" with B drawn instead (to train A against a frozen random B). Returns the wrappers by module
    name, in model order. A rank above a target's min(in, out) is refused before any factor is
    allocated (ΔW there cannot have that rank, and rank=100000 would allocate gigabytes), unless
    `allow_rank_above_dim`, which warns instead.
    """
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise LorascopeError(f"targets regex {targets!r} does not compile: {e}") from None
    elif not targets:
        raise LorascopeError("targets is empty: name at least one module suffix or a regex")
    names = [
        name
        for name, module in model.named_modules()
        if name and is_linear(module) and matches(name, targets)
    ]
    if not names:
        linear = [n for n, m in model.named_modules() if is_linear(m)]
        examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linear})[:12])
        raise LorascopeError(
            f"targets {_targets_text(targets)} match no linear module of "
            f"{type(model).__name__}; its linear modules end in: {examples}"
        )
    _check_rank(model, names, rank, allow_rank_above_dim)
    _check_not_trainable(model, names, list(trainable))
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for name in names:
        generator = None if seed is None else torch.Generator().manual_seed(init_seed(seed, rank, name))
        layer = LoRALinear(
            model.get_submodule(name), rank, alpha, dropout, init, rslora, generator, zero, dora
        )
        _set_module(model, name, layer)
        wrapped[name] = layer
    trainable = list(trainable)
    if trainable:
        extra = [n for n, _ in model.named_modules() if n and matches(n, trainable)]
        if not extra:
            raise LorascopeError(f"trainable modules {_targets_text(trainable)} match nothing")
        for n in extra:
            for p in model.get_submodule(n).parameters():
                p.requires_grad_(True)
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRALinear modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def factors(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """The run-file tensors: "<module>.lora_A" (r, in) and "<module>.lora_B" (out, r), fp32 CPU copies
    (copies always: a snapshot must not follow the parameters as training goes on)."""
    out = {}
    for name, layer in wrapped.items():
        out[f"{name}.lora_A"] = layer.A.detach().to("cpu", torch.float32, copy=True)
        out[f"{name}.lora_B"] = layer.B.detach().to("cpu", torch.float32, copy=True)
        if layer.dora:  # DoRA's magnitude m (out,): run_format's "<module>.lora_magnitude"
            out[f"{name}.lora_magnitude"] = layer.magnitude.detach().to("cpu", torch.float32, copy=True)
    return out


@torch.no_grad()
def load_factors(wrapped: dict[str, LoRALinear], tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved factors into the wrappers; every wrapper must be present with matching shapes."""
    for name, layer in wrapped.items():
        parts = [(f"{name}.lora_A", layer.A), (f"{name}.lora_B", layer.B)]
        parts += [(f"{name}.lora_magnitude", layer.magnitude)] if layer.dora else []
        for key, param in parts:
            if key not in tensors:
                raise LorascopeError(f"saved factors lack {key}")
            if tensors[key].shape != param.shape:
                raise LorascopeError(
                    f"{key}: saved shape {tuple(tensors[key].shape)} != model's {tuple(param.shape)}"
                )
            param.copy_(tensors[key])


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
