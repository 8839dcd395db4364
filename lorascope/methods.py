"""What a run trains, and how its update is saved: LoRA factors, or the dense W of the target modules.

    LoRAUpdate   wraps the targets in LoRALinear (A0 seeded per module, B = 0); saves A, B per module to
                 adapter.safetensors (and A0, B0 to adapter_init.safetensors)
    FullUpdate   trains the targets' W itself (full fine-tuning); saves ΔW = W_T − W_0 (out, in) per
                 module to delta.safetensors

Both freeze every other base parameter; the classification head (if any) trains along with either.
The training loop (`lorascope.train`) sees only this interface: param_groups, update tensors,
per-step statistics, and the metadata the saved file carries.
"""

from __future__ import annotations

import torch
from torch import nn

from lorascope import run_format
from lorascope.errors import LorascopeError
from lorascope.lora import add_lora, factors, is_linear, matches
from lorascope.names import kind_label, module_kind


def _by_kind(tensors: dict[str, torch.Tensor], key: str) -> dict[str, float]:
    """{key: ‖all‖_F, key/<kind>: ‖those of one module kind‖_F}: flat keys for metrics.jsonl."""
    total, kinds = 0.0, {}
    for name, t in tensors.items():
        sq = float(t.detach().float().pow(2).sum())
        total += sq
        kind = kind_label(module_kind(name))
        kinds[kind] = kinds.get(kind, 0.0) + sq
    return {key: total**0.5, **{f"{key}/{k}": v**0.5 for k, v in kinds.items()}}


def _ratio_by_kind(num: dict[str, torch.Tensor], den: dict[str, torch.Tensor], key: str) -> dict:
    """{key: ‖num‖_F / ‖den‖_F over all modules, key/<kind>: the same per kind}; None where ‖den‖ = 0
    (A0 = 0 when B is the random factor): undefined, not a number."""
    n, d = _by_kind(num, key), _by_kind(den, key)
    return {k: n[k] / d[k] if d[k] > 0 else None for k in n}


def keep_fp32(module: nn.Module, cast_back: bool) -> None:
    """Store `module`'s parameters in fp32 inside a lower-precision model: its inputs are cast to fp32
    on the way in, and (cast_back) its output to the input's dtype on the way out, so its neighbours
    see the precision they are stored in. Under autocast the matmul itself runs in autocast's dtype,
    with these fp32 tensors as the master copies (what mixed precision means)."""
    module.float()

    def cast_in(mod, args):
        dtypes = [a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()]
        mod._lorascope_in_dtype = dtypes[0] if dtypes else None
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def cast_out(mod, args, output):
        dtype = getattr(mod, "_lorascope_in_dtype", None)
        return output.to(dtype) if dtype is not None and torch.is_tensor(output) else output

    module.register_forward_pre_hook(cast_in)
    if cast_back:
        module.register_forward_hook(cast_out)


class LoRAUpdate:
    """LoRA on the targets: ΔW = s · B A per module, A0 from a generator seeded by (seed, rank, module)."""

    method = "lora"
    file = run_format.ADAPTER_FILE

    def __init__(self, model: nn.Module, cfg, head: list[str]):
        lc = cfg.lora
        # Zhu et al.'s asymmetry: training A alone against a frozen B needs a random B (B = 0 would
        # keep ΔW = 0), so with B frozen A starts at 0 instead.
        self.wrapped = add_lora(
            model, lc.targets, cfg.rank, cfg.alpha, lc.dropout, lc.init, lc.rslora,
            trainable=head, seed=cfg.seed, zero="B" if lc.train_B else "A",
            allow_rank_above_dim=lc.allow_rank_above_dim, dora=lc.dora,
        )  # fmt: skip
        for layer in self.wrapped.values():
            layer.A.requires_grad_(lc.train_A)
            layer.B.requires_grad_(lc.train_B)
        self.lr_ratio = lc.lr_ratio
        self.A0 = {n: layer.A.detach().clone() for n, layer in self.wrapped.items()}

    def param_groups(self, lr: float) -> list[dict]:
        """A at lr, B at lr_ratio × lr (LoRA+); frozen factors in no group."""
        A = [w.A for w in self.wrapped.values() if w.A.requires_grad]
        A += [w.magnitude for w in self.wrapped.values() if w.dora]  # DoRA's m at A's rate
        B = [w.B for w in self.wrapped.values() if w.B.requires_grad]
        groups = [{"params": A, "lr": lr, "name": "A"}, {"params": B, "lr": lr * self.lr_ratio, "name": "B"}]
        return [g for g in groups if g["params"]]

    def tensors(self) -> dict[str, torch.Tensor]:
        return factors(self.wrapped)

    def save(self, path, metadata: dict) -> None:
        run_format.save_adapter(path, self.tensors(), metadata)

    def names(self) -> list[str]:
        return list(self.wrapped)

    def base_weights(self) -> dict[str, torch.Tensor]:
        return {n: layer.original_weight() for n, layer in self.wrapped.items()}  # before a shifting init

    def n_params(self) -> int:
        return sum(p.numel() for w in self.wrapped.values() for p in (w.A, w.B))

    def metadata(self, cfg) -> dict:
        layer = next(iter(self.wrapped.values()))
        return {
            "rank": cfg.rank, "alpha": cfg.alpha, "scaling": layer.scaling, "targets": cfg.lora.targets,
            "init": cfg.lora.init, "rslora": cfg.lora.rslora, "lr_ratio": cfg.lora.lr_ratio,
            "dora": cfg.lora.dora, "train_A": cfg.lora.train_A, "train_B": cfg.lora.train_B,
            "zero_init": layer.zero,
            "fan_in_fan_out": any(m.fan_in_fan_out for m in self.wrapped.values()),  # Conv1D: PEFT export
        }  # fmt: skip

    def _params(self, part: str) -> dict[str, torch.Tensor]:
        return {n: getattr(layer, part) for n, layer in self.wrapped.items()}

    def trainable(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"A": {module: A}, "B": {module: B}}, the trained factors only."""
        return {p: self._params(p) for p in "AB" if next(iter(self._params(p).values())).requires_grad}

    def state_stats(self) -> dict[str, float]:
        """‖A − A0‖_F / ‖A0‖_F, ‖B‖_F and ‖ΔW‖_F (via B = Q R and Aᵀ = Q' R': ‖R Rᵀ'‖_F), all and per kind."""
        with torch.no_grad():
            A, B = self._params("A"), self._params("B")
            dW = {}
            for n, layer in self.wrapped.items():
                R_B, R_A = torch.linalg.qr(layer.B.float())[1], torch.linalg.qr(layer.A.float().T)[1]
                dW[n] = layer.scaling * (R_B @ R_A.T)  # r × r, same Frobenius norm as s·B A
            return {
                **_ratio_by_kind({n: A[n] - self.A0[n] for n in A}, self.A0, "dA_rel"),
                **_by_kind(B, "B_norm"),
                **_by_kind(dW, "dW_norm"),
            }


class FullUpdate:
    """Full fine-tuning of the targets' W (nn.Linear or Conv1D); ΔW = W_T − W_0 saved per module."""

    method = "full"
    file = run_format.DELTA_FILE

    def __init__(self, model: nn.Module, cfg, head: list[str]):
        targets = cfg.full.targets
        names = [n for n, m in model.named_modules() if n and is_linear(m) and matches(n, targets)]
        if not names:
            raise LorascopeError(f"full.targets {targets!r} match no linear module of {type(model).__name__}")
        for p in model.parameters():
            p.requires_grad_(False)
        self.modules = {n: model.get_submodule(n) for n in names}
        self.conv1d = {n: not isinstance(m, nn.Linear) for n, m in self.modules.items()}  # (in, out) storage
        for m in self.modules.values():
            m.weight.requires_grad_(True)
        for h in head:
            for p in model.get_submodule(h).parameters():
                p.requires_grad_(True)
        self.lr = cfg.full.lr
        self.W0 = {n: w.detach().clone() for n, w in self._weights().items()}  # in the base's precision
        for m in self.modules.values():
            if m.weight.dtype != torch.float32:
                # An fp32 master of W: steps below the stored precision's resolution of W accumulate.
                keep_fp32(m, cast_back=True)  # the next layer still sees the base's own precision

    def _weights(self) -> dict[str, torch.Tensor]:
        """W per module in nn.Linear's (out, in) layout (Conv1D's stored (in, out) transposed: a view)."""
        return {n: m.weight.T if self.conv1d[n] else m.weight for n, m in self.modules.items()}

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [m.weight for m in self.modules.values()], "lr": self.lr, "name": "W"}]

    def tensors(self) -> dict[str, torch.Tensor]:
        """ΔW = W_T − W_0 per module, (out, in) fp32 on the CPU."""
        return {n: (w.detach() - self.W0[n]).float().cpu() for n, w in self._weights().items()}

    def save(self, path, metadata: dict) -> None:
        run_format.save_delta(path, self.tensors(), metadata)

    def names(self) -> list[str]:
        return list(self.modules)

    def base_weights(self) -> dict[str, torch.Tensor]:
        return self.W0

    def n_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules.values())

    def metadata(self, cfg) -> dict:
        # LoRA's entries are null: a full fine-tuning run has no rank, α, scaling or init of its own.
        return {"rank": None, "alpha": None, "scaling": None, "init": None, "rslora": None,
                "targets": cfg.full.targets, "full_lr": cfg.full.lr,
                "fan_in_fan_out": any(self.conv1d.values())}  # fmt: skip

    def trainable(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"W": {n: m.weight for n, m in self.modules.items()}}

    def state_stats(self) -> dict[str, float]:
        """‖ΔW‖_F = ‖W_t − W_0‖_F and ‖ΔW‖_F / ‖W_0‖_F, all and per kind."""
        with torch.no_grad():
            dW = {n: w - self.W0[n] for n, w in self._weights().items()}
            return {**_by_kind(dW, "dW_norm"), **_ratio_by_kind(dW, self.W0, "dW_rel")}


def build_update(model: nn.Module, cfg, head: list[str]) -> LoRAUpdate | FullUpdate:
    return FullUpdate(model, cfg, head) if cfg.method == "full" else LoRAUpdate(model, cfg, head)


def grad_stats(update) -> dict[str, float]:
    """grad_norm_<factor> (all modules) and grad_norm_<factor>/<kind>, after backward and before clipping."""
    out = {}
    for part, params in update.trainable().items():
        grads = {n: p.grad for n, p in params.items() if p.grad is not None}
        out.update(_by_kind(grads, f"grad_norm_{part}"))
    return out


def snapshot_params(update) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the trained tensors, to measure what one optimizer step changed."""
    return {
        part: {n: p.detach().clone() for n, p in params.items()}
        for part, params in update.trainable().items()
    }


def update_stats(update, before: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """update_norm_<factor> = ‖θ_after − θ_before‖_F (all modules and per kind) of one optimizer step."""
    out = {}
    with torch.no_grad():
        for part, params in update.trainable().items():
            out.update(_by_kind({n: p - before[part][n] for n, p in params.items()}, f"update_norm_{part}"))
    return out
