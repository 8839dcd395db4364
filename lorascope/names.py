"""Module names, in one place: which modules to analyse, which runs share, which checkpoint key is which.

    layer_index("model.layers.12.self_attn.q_proj") -> 12
    parse_layers("0,2,5-7", available) / layers_of(names, "0,2")   --layers
    select_modules(names, regex, layers) / selected(names, regex, "0-3")   --modules and --layers
    shared_modules([names_a, names_b, ...])   the modules every run adapts, in the first's order
    match_modules(names_a, names_b)   (common, only in a, only in b)
    match_module(names, wanted)   exact, else the unique dotted-suffix match ("bert." wrappers)

Checkpoint keys that transformers renames on load (its conversion mapping) are matched by
`lorascope.base_model` through `lorascope.key_mapping`; runs whose adapters were saved under the
two namings are aligned by `lorascope.compare.inputs.aligned`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from lorascope.errors import LorascopeError

# The first all-digit component of a dotted name is the layer index:
# "encoder.layer.3.attention.self.query" -> 3, "model.layers.12.self_attn.q_proj" -> 12.
_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The layer a module belongs to, from its name, or None if the name has no number."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


MAX_LAYERS = 10_000  # more layers than any model has: a range past this is a typo, not a request


def parse_layers(text: str, available: Iterable[int] | None = None) -> set[int]:
    """ "0,2,5-7" -> {0, 2, 5, 6, 7}.

    With `available` (the layers a model has), ranges are cut to them, so "0-999999999" means every
    layer and builds nothing larger; a single layer the model lacks is an error. Without it, a list
    naming more than MAX_LAYERS layers is refused rather than built."""
    spans: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            span = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise LorascopeError(f"--layers {text!r}: want a list like 0,2,5-7") from None
        if span[0] < 0 or span[0] > span[1]:
            raise LorascopeError(f"--layers {text!r}: {part} is not a range of layers (want lo-hi, lo ≤ hi)")
        spans.append(span)
    if not spans:
        raise LorascopeError(f"--layers {text!r} names no layer")
    if available is None:
        if sum(hi - lo + 1 for lo, hi in spans) > MAX_LAYERS:
            raise LorascopeError(f"--layers {text!r} names more than {MAX_LAYERS} layers")
        return {i for lo, hi in spans for i in range(lo, hi + 1)}
    have = sorted(set(available))
    missing = [lo for lo, hi in spans if lo == hi and lo not in have]
    if missing:
        shown = f"{have[0]}-{have[-1]}" if have else "none"
        raise LorascopeError(f"--layers {text!r}: the model has no layer {missing[0]} (layers: {shown})")
    layers = {i for i in have if any(lo <= i <= hi for lo, hi in spans)}
    if not layers:
        raise LorascopeError(f"--layers {text!r} names none of the model's layers ({have[0]}-{have[-1]})")
    return layers


def layers_of(names: Iterable[str], text: str | None) -> set[int] | None:
    """--layers `text` cut to the layers that the modules `names` have; None without a --layers."""
    if not text:
        return None
    return parse_layers(text, available={i for n in names if (i := layer_index(n)) is not None})


def selected(
    names: Iterable[str], regex: str | None = None, layers: str | set[int] | None = None
) -> list[str]:
    """--modules and --layers on a run's module names: `layers` a --layers text (cut to the layers
    the names have, `layers_of`) or a set of indices; every name when neither filter is given."""
    names = list(names)
    if isinstance(layers, str):
        layers = layers_of(names, layers)
    if not regex and layers is None:
        return names
    return select_modules(names, regex, layers)


def select_modules(
    names: Iterable[str], regex: str | None = None, layers: Sequence[int] | set[int] | None = None
) -> list[str]:
    """Names (order kept) whose text matches `regex` (re.search) and whose layer is in `layers`."""
    names = list(names)
    pattern = None
    if regex:
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise LorascopeError(f"--modules {regex!r} is not a valid regex: {e}") from None
    keep = [
        n
        for n in names
        if (pattern is None or pattern.search(n)) and (layers is None or layer_index(n) in set(layers))
    ]
    if names and not keep:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise LorascopeError(
            f"no module matches the filter (regex={regex!r}, layers={sorted(layers or [])}); "
            f"modules are: {shown}"
        )
    return keep


def match_modules(names_a: Iterable[str], names_b: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(common, only in a, only in b); common keeps a's order."""
    names_a, names_b = list(names_a), list(names_b)
    set_a, set_b = set(names_a), set(names_b)
    return (
        shared_modules([names_a, names_b]),
        [n for n in names_a if n not in set_b],
        [n for n in names_b if n not in set_a],
    )


def shared_modules(name_lists: Iterable[Iterable[str]]) -> list[str]:
    """The names in every list, in the first list's order ([] for no list)."""
    lists = [list(names) for names in name_lists]
    if not lists:
        return []
    rest = [set(names) for names in lists[1:]]
    return [n for n in lists[0] if all(n in other for other in rest)]


def match_module(names, wanted: str, where: str = "the base model") -> str:
    """The name in `names` for a module: exact, else the unique name that `wanted` is a dotted suffix
    of, or that is a dotted suffix of `wanted` (run names carry task wrappers such as "bert.")."""
    if wanted in names:
        return wanted
    hits = suffix_matches(names, wanted)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise LorascopeError(f"module {wanted!r} is not in {where}")
    raise LorascopeError(f"module {wanted!r} is ambiguous in {where}: {', '.join(hits[:4])}")


def suffix_matches(names: Iterable[str], wanted: str) -> list[str]:
    """The names that `wanted` is a dotted suffix of, or that are a dotted suffix of `wanted`."""
    return [n for n in names if n.endswith("." + wanted) or wanted.endswith("." + n)]


def module_kind(name: str) -> str:
    """The part of a module name after its layer index: "bert.encoder.layer.3.attention.self.query"
    -> "attention.self.query"; a name without a layer index is its own kind."""
    layer = layer_index(name)
    if layer is None or f".{layer}." not in name:
        return name
    return name.split(f".{layer}.", 1)[-1]


def kind_label(kind: str) -> str:
    """A short label for a figure: "attention.self.query" -> "query", "self_attn.q_proj" -> "q_proj"."""
    return kind.rsplit(".", 1)[-1] if not kind.endswith(("output.dense",)) else kind


def short_name(name: str) -> str:
    """A compact panel title: "encoder.layer.3.attention.self.query" -> "L3 query"."""
    layer = layer_index(name)
    tail = name.rsplit(".", 1)[-1]
    if tail in ("dense", "proj") and name.count(".") >= 2:  # "attention.output.dense" says more
        tail = ".".join(name.rsplit(".", 2)[-2:])
    return f"L{layer} {tail}" if layer is not None else tail
