"""Module names for the analyses: re-exported from `lorascope.names`, their one home."""

from lorascope.names import (
    kind_label,
    layer_index,
    layers_of,
    match_modules,
    module_kind,
    parse_layers,
    select_modules,
    selected,
    shared_modules,
    short_name,
)

__all__ = [
    "kind_label",
    "layer_index",
    "layers_of",
    "match_modules",
    "module_kind",
    "parse_layers",
    "select_modules",
    "selected",
    "shared_modules",
    "short_name",
]
