"""Checkpoint keys under the names a model has in memory, through transformers' own conversion mapping.

transformers ≥ 5 renames checkpoint keys on load ("vit.encoder.layer.0.attention.attention.query"
-> "vit.layers.0.attention.q_proj", "language_model.model.layers.0..." ->
"model.language_model.layers.0...", GPT-NeoX's "embed_out" -> "lm_head") and back on save, so
checkpoints (and the Hub) keep the old keys while PEFT saves adapters under the new names.
`KeyMap` applies the conversion that the installed transformers applies to the checkpoint's
model (`get_model_conversion_mapping` of the architecture in config.json, built on the meta
device: no weight is allocated), so every rule transformers knows is followed, none is copied here:

    to_model(key)        checkpoint key -> in-memory name (the load direction; the canonical name)
    to_checkpoint(name)  in-memory name -> checkpoint key (the inverse, the save direction)

Names already in the new form are left as they are by `to_model`, so an old-name adapter and a
new-name adapter of one model have one canonical name per module.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class KeyMap:
    """The load-time key conversion of one checkpoint's model type (see the module docstring).

    Keys and names here are full tensor keys ("<module>.weight"); `module_to_model` and
    `module_to_checkpoint` take module names (a ".weight" is added and removed)."""

    def __init__(self, model_type: str, conversions: list) -> None:
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        self.model_type = model_type
        self._renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
        self._converters = [c for c in conversions if isinstance(c, WeightConverter)]
        reverse = [c.reverse_transform() for c in conversions]
        self._reverse_renamings = [c for c in reverse if isinstance(c, WeightRenaming)]
        self._reverse_converters = [c for c in reverse if isinstance(c, WeightConverter)]

    def __repr__(self) -> str:
        n, m = len(self._renamings), len(self._converters)
        return f"KeyMap({self.model_type!r}, {n} renamings, {m} converters)"

    def to_model(self, key: str) -> tuple[str, bool]:
        """(the in-memory key of checkpoint `key`, whether a WeightConverter made it: then the tensor
        is not stored as such, e.g. DINOv2's fused mlp.weights_in that the model splits in two)."""
        from transformers.core_model_loading import rename_source_key

        renamed, converter = rename_source_key(key, self._renamings, self._converters)
        return renamed, converter is not None

    def converted_names(self, key: str) -> list[str]:
        """Every in-memory key a WeightConverter makes of checkpoint `key` (gate_proj and up_proj of
        one fused weights_in); [] where `key` is only renamed."""
        renamed, converted = self.to_model(key)
        if not converted:
            return []
        for converter in self._converters:
            first, *others = converter.target_patterns
            if first in renamed:
                return [renamed, *(renamed.replace(first, other, 1) for other in others)]
        return [renamed]

    def to_checkpoint(self, key: str) -> str:
        """The checkpoint key that transformers saves the in-memory `key` under (the inverse)."""
        from transformers.core_model_loading import rename_source_key

        renamed, _ = rename_source_key(key, self._reverse_renamings, self._reverse_converters, reverse=True)
        return renamed

    def module_to_model(self, module: str) -> str:
        """A module name in its in-memory (canonical) form: "vit.encoder.layer.0.attention.attention.query"
        -> "vit.layers.0.attention.q_proj"; a name already in that form is returned unchanged."""
        return self.to_model(module + ".weight")[0].removesuffix(".weight")

    def module_to_checkpoint(self, module: str) -> str:
        return self.to_checkpoint(module + ".weight").removesuffix(".weight")


class MappedNames:
    """A checkpoint's names (keys without ".weight") under their in-memory names: `find(module)`."""

    def __init__(self, mapping: KeyMap, names) -> None:
        self.mapping = mapping
        self.canonical: dict[str, tuple[str, bool]] = {}  # in-memory name -> (stored name, converted)
        for name in names:
            renamed, converted = mapping.to_model(name + ".weight")
            for made in mapping.converted_names(name + ".weight") if converted else [renamed]:
                self.canonical.setdefault(made.removesuffix(".weight"), (name, converted))

    def find(self, module: str) -> str | None:
        """The stored name whose in-memory name is `module`'s (renamed likewise: an old-name adapter's
        module), or ends in it or is a dotted suffix of it; None where no renamed name matches. A
        module that transformers makes by a conversion (fused or split tensors) is refused."""
        from lorascope.errors import LorascopeError
        from lorascope.names import suffix_matches

        wanted = self.mapping.module_to_model(module)
        found = wanted if wanted in self.canonical else None
        if found is None:
            hits = suffix_matches(self.canonical, wanted)
            if len(hits) != 1:
                return None
            found = hits[0]
        name, converted = self.canonical[found]
        if found == name and wanted == module:
            return None  # nothing was renamed: no match of the mapping's
        if converted:
            raise LorascopeError(
                f"module {module}: transformers builds it from the checkpoint's {name}.weight by a "
                f"conversion, not a rename ({self.mapping.model_type}); lorascope reads stored tensors only"
            )
        log.info(
            "module %s: checkpoint key %s.weight (transformers' key mapping for %s)",
            module, name, self.mapping.model_type,
        )  # fmt: skip
        return name


def read_config(folder: Path) -> dict | None:
    """config.json of a model folder as a dict, or None where there is none or it is unreadable."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def key_map(folder: str | Path) -> KeyMap | None:
    """The KeyMap of the model whose config.json is in `folder`, or None: no config, a model type
    the installed transformers does not know, or no conversion for it (keys are then the names)."""
    path = Path(folder) / CONFIG_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _key_map(str(path.resolve()), stamp)


@lru_cache(maxsize=16)
def _key_map(config_path: str, stamp: int) -> KeyMap | None:
    config = read_config(Path(config_path).parent)
    if not config or not config.get("model_type"):
        return None
    try:
        conversions = _conversions(Path(config_path).parent, config)
    except Exception as e:  # an architecture this transformers cannot build: no renaming known
        log.debug("%s: no transformers key mapping (%s: %s)", config_path, type(e).__name__, e)
        return None
    if not conversions:
        return None
    log.debug(
        "%s: transformers' key mapping for %s: %d rule(s)",
        config_path,
        config["model_type"],
        len(conversions),
    )
    return KeyMap(config["model_type"], conversions)


def _conversions(folder: Path, config: dict) -> list:
    """transformers' load-time conversions for the architecture in config.json, from a meta-device
    model (the scopes of sub-models, e.g. LLaVA's language model, come from the built module tree)."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.conversion_mapping import get_model_conversion_mapping

    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    architectures = config.get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    with torch.device("meta"):
        if cls is None:
            from transformers import AutoModel

            model = AutoModel.from_config(hf_config)
        else:
            model = cls(hf_config)
    return list(get_model_conversion_mapping(model, add_legacy=True))
