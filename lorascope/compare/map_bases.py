"""The first half of an adapter map (`lorascope.compare.maps`): every adapter read once, each shared
module's top-k basis kept (float32, (n, k)) in one stacked Z per module, the factors dropped.

Adapters are read in order; after the first, the next ones are read and their bases computed on
other threads (`module_pool.prefetched`) while one is taken in, so reading and the basis step use
the CPUs side by side. ΔW's bases of LoRA factors come from r × r Gram matrices, all modules of
an adapter at once (`gram_bases.delta_bases`); the rest one module at a time (`Factor.basis`).
"""

from __future__ import annotations

import logging

import torch

from lorascope.analysis.delta_cosine import factored_pieces
from lorascope.analysis.factors import get_factor
from lorascope.analysis.gram_bases import delta_bases
from lorascope.analysis.linalg import numerical_rank
from lorascope.compare.inputs import aligned
from lorascope.delta import rank_bound
from lorascope.errors import LorascopeError
from lorascope.module_pool import prefetched
from lorascope.names import selected, shared_modules
from lorascope.run_format import Run
from lorascope.runs import load_run

log = logging.getLogger("lorascope.compare.maps")  # its messages are the map's

_WHAT = {"dW-right": "ΔW", "dW-left": "ΔW", "A": "A", "B": "B"}


def collect_bases(
    sources, names, factor, k, modules, layers, same_base, progress, left_out=None, signed=False, workers=1
):
    """Load the adapters one at a time; keep each shared module's top-k basis (float32, (n, k_a)).

    Returns (modules shared by all, in the first adapter's order; the others; {module: (Z, widths)};
    the indexes of the adapters loaded; {module: (energies [N], ΔW pieces [N] when signed)}) with Z
    (n, N·k) the stacked bases (`stack_bases` layout; a transposed view of row-major (N·k, n) storage),
    filled in place: one allocation per module instead of N small ones that would fragment the heap.
    With `left_out` (a sweep's runs), an adapter that cannot be loaded is added to it and left out."""
    from tqdm.auto import tqdm

    N = len(names)
    spec = get_factor(factor)
    first: tuple[list[str], str | None] | None = None  # the first adapter's module names and base
    bases: dict[str, tuple[torch.Tensor, list[int]]] = {}
    kept: list[str] = []
    every: dict[str, None] = {}  # every module some adapter has, in first-seen order
    thin = 0  # (adapter, module) pairs whose basis a rank-deficient matrix cuts short
    loaded: list[int] = []
    extra: dict[str, tuple[list, list]] = {}  # module -> (top-k energy Σσ², ΔW pieces) per adapter

    def prepare(idx: int):
        """(run, its selected modules, their top-k bases, error reading it, error after): the work of
        one adapter that needs nothing from the others but the first one's names."""
        try:
            run = sources[idx] if isinstance(sources[idx], Run) else load_run(sources[idx])
        except LorascopeError as e:
            return None, None, None, e, None
        try:
            run = aligned(run, *first) if first is not None else run
            mine = selected(run.adapters, modules, layers)  # layers "0,2-5": cut to the layers it has
            tops = _top_bases(spec, [run.adapters[m] for m in mine], k)
            return run, mine, dict(zip(mine, tops, strict=True)), None, None
        except LorascopeError as e:  # raised where the plain loop raised it: after the base check
            return run, None, None, None, e

    def prepared():
        """Each adapter's `prepare` in order: until the first is read here, then the next `workers`
        read and their bases computed on other threads while this one is taken in."""
        idx = 0
        while idx < len(sources) and first is None:
            yield idx, prepare(idx)
            idx += 1
        rest = range(idx, len(sources))
        for j, future in zip(rest, prefetched(prepare, rest, workers), strict=True):
            yield j, future.result()

    bar = tqdm(total=len(sources), desc=f"bases {factor}", unit="adapter", disable=not progress)
    for idx, (run, mine, tops, unread, late) in prepared():
        bar.update()
        if unread is not None:
            if left_out is None:
                raise unread
            left_out[names[idx]] = str(unread)  # one bad run of a sweep never sinks the map of the others
            continue
        i, name = len(loaded), names[idx]  # i: the adapter's place among those loaded (its columns in Z)
        loaded.append(idx)
        if first is None:
            first = (list(run.adapters), run.base_model)
        if same_base is not None:
            same_base.add(run, name)
        if late is not None:
            raise late
        every.update(dict.fromkeys(mine))
        shared = mine if i == 0 else shared_modules([kept, mine])
        if not shared:
            before = names[loaded[0]] if i == 1 else f"the {i} adapters before it"
            raise LorascopeError(
                f"{name} shares no module with {before} ({mine[0] if mine else '-'} vs {kept[0]}): "
                "compare adapters of the same base model and targets"
            )
        kept = shared
        for m in [m for m in bases if m not in kept]:
            del bases[m]  # not shared by all: free its bases now
            extra.pop(m, None)
        for m in kept:
            a, (U, S) = run.adapters[m], tops[m]
            U = U[:, : numerical_rank(S)]
            if U.shape[1] == 0:
                raise LorascopeError(f"{name}: module {m}: {_WHAT[factor]} is zero (an untrained adapter?)")
            thin += U.shape[1] < min(k, rank_bound(a))
            if i == 0:  # n columns at most per basis in R^n, whatever k asks; Z's columns are rows
                Zt = torch.zeros(N * min(k, U.shape[0]), U.shape[0], dtype=torch.float32)
                bases[m] = (Zt.T, [])  # a basis is copied in as contiguous rows of n
            Z, widths = bases[m]
            if Z.shape[0] != U.shape[0]:
                raise LorascopeError(
                    f"module {m}: n = {U.shape[0]} in {name} but {Z.shape[0]} in {names[loaded[0]]} "
                    "(different base models?)"
                )
            stride = Z.shape[1] // N
            Z[:, i * stride : i * stride + U.shape[1]] = U
            widths.append(U.shape[1])
            energies, pieces = extra.setdefault(m, ([], []))
            energies.append(float(torch.sum(S[: U.shape[1]].double() ** 2)))
            if signed:
                pieces.append(factored_pieces(a))
        del run, tops  # drop the factors: only the (n, k) bases stay
    bar.close()
    skipped = [m for m in every if m not in set(kept)]
    if skipped:
        shown = ", ".join(skipped[:4]) + (", ..." if len(skipped) > 4 else "")
        log.warning(
            "%d module(s) not shared by all %d adapters, skipped: %s", len(skipped), len(names), shown
        )
    if thin:
        log.warning(
            "%d module basis(es) have fewer than min(k, r) directions: %s is rank-deficient there "
            "(σ ≤ 1e-8 σ_1), so k is capped lower for their pairs",
            thin,
            _WHAT[factor],
        )
    if len(loaded) < 2:
        raise LorascopeError(f"{len(loaded)} adapter(s) could be read; an adapter map needs at least 2")
    # Z's columns of the adapters left out are empty: cut them (a view, no copy).
    bases = {m: (Z[:, : len(loaded) * (Z.shape[1] // N)], w) for m, (Z, w) in bases.items()}
    return kept, skipped, bases, loaded, extra


def _top_bases(spec, adapters: list, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each module's top-k basis and σ, k cut to the rank (a basis never has more columns, and a huge
    --k must allocate nothing): ΔW's of LoRA factors all at once from Gram matrices
    (`gram_bases.delta_bases`), the rest one by one (`Factor.basis`: QR, or truncated for a dense ΔW)."""
    forms = [a.factored_form if spec.matrix is None else None for a in adapters]
    fast = [j for j, f in enumerate(forms) if f is not None]
    out = dict(zip(fast, delta_bases([forms[j] for j in fast], spec.side, k), strict=True))
    return [out[j] if j in out else spec.basis(a, k=min(k, rank_bound(a))) for j, a in enumerate(adapters)]
