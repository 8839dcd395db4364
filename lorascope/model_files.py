"""A saved model folder (save_pretrained's layout): its file names, where the Hugging Face cache holds
one (found on disk, never a network call), and the refusal of pickle-only weights.

A leaf below both readers of such folders: `lorascope.models` (building a model to train) and
`lorascope.base_model` (reading its W for the analysis, which needs `models` for the presets).
"""

from __future__ import annotations

import os
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


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_folder(repo_id: str) -> Path:
    """The cached snapshot folder (refs/main) of a hub model, found on disk only: never a network call."""
    from huggingface_hub import try_to_load_from_cache  # reads the cache folders; no network

    cache = hub_cache_dir()
    for name in (INDEX_FILE, SINGLE_FILE, CONFIG_FILE, *PICKLE_FILES):
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache)
        except ValueError:  # not a valid repo id
            break
        if isinstance(found, str):
            return Path(found).parent
    raise LorascopeError(
        f"model {repo_id!r} is not in the Hugging Face cache ({cache}) and lorascope reads base weights "
        f"offline only: download it once (huggingface-cli download {repo_id} --include '*.safetensors' "
        "'*.json') or give a local folder"
    )
