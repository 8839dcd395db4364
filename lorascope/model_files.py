"""The files of a saved model folder (save_pretrained's layout), and the refusal of pickle-only weights.

A leaf below both readers of such folders: `lorascope.models` (building a model to train) and
`lorascope.base_model` (reading its W for the analysis, which needs `models` for the presets).
"""

from __future__ import annotations

from pathlib import Path

from lorascope.errors import LorascopeError

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def refuse_pickle_only(folder: Path) -> None:
    """Refuse a model folder whose weights are pickle only: loading them would run arbitrary code."""
    folder = Path(folder)
    if (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file():
        return
    if any((folder / name).is_file() for name in PICKLE_FILES):
        raise LorascopeError(
            f"{folder}: holds only pickle weights (pytorch_model.bin), which lorascope never loads; convert "
            "them to safetensors once (from_pretrained(folder).save_pretrained(out) writes model.safetensors)"
        )
