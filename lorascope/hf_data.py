"""Data sets through Hugging Face `datasets` (task=hf), always offline.

task.dataset is one of
    a dataset id in the local cache   nyu-mll/glue (task.subset=mnli): what `datasets.load_dataset` saved
                                      on a machine online, read back from the datasets cache; else the
                                      data set's files in the Hub cache (`hf download --repo-type dataset`)
    a save_to_disk folder             `Dataset.save_to_disk(DIR)` or `DatasetDict.save_to_disk(DIR)`
    a folder of data files            splits from the file names (train.jsonl, validation.jsonl), as
                                      `load_dataset(DIR)` infers them
    data files                        .parquet, .csv, .json or .jsonl files, or a glob of them: split train
Nothing is downloaded: HF_DATASETS_OFFLINE is set before `datasets` is imported, and an id that is not
cached is one line saying how to cache it.

The fields give the kind of task: label_field -> classification (text_field, and text_pair_field for a
sentence pair, tokenized together as tokenizer(a, b)); prompt_field and response_field -> instruction
tuning with the loss on the response (lorascope.instruct); text_field alone -> causal LM on blocks of
seq_len tokens. task.split trains; task.val_split validates: by default the first of VAL_SPLITS the data
set has, else none, and `lorascope.data` holds val_fraction of the training split out.

`check(task)` reads metadata only (a cached or saved data set is memory-mapped, a data file's header is
read), so the sweep calls it before any job: a split or field that does not exist is one line before a
model loads. `open_splits(task)` opens every split, checked; lorascope.hf_task makes examples of them.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lorascope.errors import LorascopeError

VAL_SPLITS = ("validation", "validation_matched", "valid", "val", "dev")  # GLUE MNLI: validation_matched
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
# The columns each kind reads: (key in the returned columns, the task field naming the column).
FIELDS = {
    "classification": (("text", "text_field"), ("pair", "text_pair_field"), ("label", "label_field")),
    "instruction": (("prompt", "prompt_field"), ("response", "response_field")),
    "lm": (("text", "text_field"),),
}


def _datasets():
    """`datasets`, offline. It reads HF_DATASETS_OFFLINE when first imported; its config is set as
    well, in case something imported it before."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    return datasets


@contextlib.contextmanager
def _quiet(ds):
    """No progress bars, and no "using the latest cached version" warnings, from `datasets` inside."""
    verbosity, bars_off = ds.logging.get_verbosity(), ds.utils.are_progress_bars_disabled()
    ds.logging.set_verbosity_error()
    ds.utils.disable_progress_bars()
    try:
        yield
    finally:
        ds.logging.set_verbosity(verbosity)
        if not bars_off:
            ds.utils.enable_progress_bars()


@dataclass
class Source:
    kind: str  # cache | disk | folder | files
    where: str  # the dataset id or folder
    files: tuple[str, ...] = ()  # data files (kind files)


def source(task: dict) -> Source:
    """What task.dataset names (see the module's docstring)."""
    name = str(task.get("dataset") or "")
    path = Path(name).expanduser()
    if path.is_dir():
        saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        return Source("disk" if saved else "folder", str(path))
    pattern = any(c in name for c in "*?[")
    if pattern or path.suffix.lower() in FILE_BUILDERS or path.is_file():
        files = tuple(sorted(glob.glob(str(path)))) if pattern else ((str(path),) if path.is_file() else ())
        if not files:
            raise LorascopeError(f"task.dataset={name}: no such file")
        odd = sorted({Path(f).suffix.lower() for f in files} - set(FILE_BUILDERS))
        if odd or len({FILE_BUILDERS[Path(f).suffix.lower()] for f in files}) != 1:
            raise LorascopeError(
                f"task.dataset={name}: data files must be of one format ({', '.join(FILE_BUILDERS)}), "
                f"found {', '.join(sorted({Path(f).suffix or Path(f).name for f in files}))}"
            )
        return Source("files", name, files)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LorascopeError(
            f"task.dataset={name}: no such folder (give a save_to_disk folder, data files, or a dataset id)"
        )
    return Source("cache", name)


def _not_cached(task: dict) -> LorascopeError:
    name, subset = task["dataset"], task.get("subset")
    call = f"datasets.load_dataset('{name}'" + (f", '{subset}')" if subset else ")")
    cache = os.environ.get("HF_DATASETS_CACHE") or "~/.cache/huggingface/datasets"
    return LorascopeError(
        f"task.dataset={name} is not in the local datasets cache ({cache}) and lorascope never downloads: "
        f"run `{call}` once on a machine online with the same cache, or give a save_to_disk folder or "
        "data files"
    )


@contextlib.contextmanager
def _reading(task: dict):
    """Turn what `datasets` raises into one line naming task.dataset."""
    try:
        yield
    except LorascopeError:
        raise
    except ConnectionError:  # offline, and the id is not in the cache
        raise _not_cached(task) from None
    except Exception as e:  # a missing subset, a file datasets cannot parse, ...
        lines = [line.strip() for line in str(e).splitlines() if line.strip()][:2]
        hint = "; give task.subset" if "multiple" in str(e) and "configuration" in str(e) else ""
        raise LorascopeError(
            f"task.dataset={task['dataset']} cannot be read: {'; '.join(lines) or type(e).__name__}{hint}"
        ) from None


def _snapshot(repo_id: str) -> str | None:
    """The folder of a data set's files in the Hub cache (`hf download --repo-type dataset ID`), or None."""
    from huggingface_hub import snapshot_download

    with contextlib.suppress(Exception):  # not there, or not whole: not cached
        return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    return None


def _cached(src: Source) -> Source:
    """A dataset id that the datasets cache lacks, read from its files in the Hub cache instead."""
    folder = _snapshot(src.where)
    if folder is None:
        raise ConnectionError(src.where)  # _reading says: not cached
    return Source("folder", folder)


def _from_cache(src: Source, subset: str | None, ds) -> tuple[Source, dict | None]:
    """(src, {split: Dataset}) for a dataset id in the datasets cache; (its Hub-cache folder, None) for
    one that only the Hub cache holds; (src, None) for anything else."""
    if src.kind != "cache":
        return src, None
    try:
        return src, dict(ds.load_dataset(src.where, subset))
    except ConnectionError:  # offline: datasets' own cache does not hold it
        return _cached(src), None


def _open(src: Source, subset: str | None, ds) -> dict:
    """{split: Dataset}, memory-mapped (data files are converted to Arrow in the datasets cache once)."""
    src, splits = _from_cache(src, subset, ds)
    if splits is not None:
        return splits
    if src.kind == "disk":
        if subset:
            raise LorascopeError(f"task.subset={subset}: a save_to_disk folder has no subsets; unset it")
        obj = ds.load_from_disk(src.where)
        return dict(obj) if isinstance(obj, ds.DatasetDict) else {str(obj.split or "train"): obj}
    if src.kind == "files":
        builder = FILE_BUILDERS[Path(src.files[0]).suffix.lower()]
        return dict(ds.load_dataset(builder, data_files=list(src.files)))
    return dict(ds.load_dataset(src.where, subset))


def _header(path: str) -> list[str] | None:
    """A data file's column names from its header alone; None where that needs more (a JSON array)."""
    suffix = Path(path).suffix.lower()
    with contextlib.suppress(OSError, ValueError, StopIteration):
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path).names
        with open(path, encoding="utf-8", newline="") as f:
            if suffix == ".csv":
                return next(csv.reader(f))
            first = next(line for line in f if line.strip())
            rec = json.loads(first)
            return list(rec) if isinstance(rec, dict) else None
    return None


def _described(splits) -> dict[str, tuple[list[str], dict]]:
    return {str(s): (d.column_names, dict(d.features)) for s, d in dict(splits).items()}


def _metadata(src: Source, subset: str | None, ds) -> dict[str, tuple[list[str] | None, dict]]:
    """{split: (columns or None where unknown, features)} without converting any data file."""
    src, splits = _from_cache(src, subset, ds)
    if splits is not None or src.kind == "disk":
        return _described(splits if splits is not None else _open(src, subset, ds))
    if src.kind == "folder":
        files = ds.load_dataset_builder(src.where, subset).config.data_files  # {split: [files]}
        return {str(s): (_header(f[0]) if f else None, {}) for s, f in files.items()}
    return {"train": (_header(src.files[0]), {})}


def task_kind(task: dict) -> str:
    """classification (label_field), instruction (prompt_field) or lm; task.kind, if set, must agree."""
    kind = "lm" if not task.get("prompt_field") else "instruction"
    kind = "classification" if task.get("label_field") else kind
    if task.get("kind") and task["kind"] != kind:
        raise LorascopeError(
            f"task.kind={task['kind']} does not fit the fields given (they make a {kind} task): "
            "classification needs task.label_field, instruction task.prompt_field and task.response_field"
        )
    return kind


def val_split(task: dict, splits) -> str | None:
    """The validation split, or None: hold val_fraction of the training split out."""
    if task.get("val_split"):
        return None if task["val_split"] == task.get("split", "train") else task["val_split"]
    return next((s for s in VAL_SPLITS if s in splits and s != task.get("split", "train")), None)


def _check(task: dict, meta: dict[str, tuple[list[str] | None, dict]]) -> None:
    """One line for a split or a column that the data set does not have, or labels it cannot classify."""
    name = task["dataset"]
    for key in ("split", "val_split"):
        value = task.get(key) or ("train" if key == "split" else None)
        if value is not None and value not in meta:
            raise LorascopeError(
                f"task.{key}={value} is not a split of {name}: its splits are {', '.join(meta)}"
            )
    kind = task_kind(task)
    for split in dict.fromkeys(s for s in (task.get("split", "train"), val_split(task, meta)) if s):
        columns, features = meta[split]
        for _, field in FIELDS[kind]:
            column = task.get(field)
            if column is None and field == "text_pair_field":
                continue
            if columns is not None and column not in columns:
                raise LorascopeError(
                    f"task.{field}={column} is not a column of {name} ({split}): "
                    f"its columns are {', '.join(columns)}"
                )
        label = features.get(task.get("label_field")) if kind == "classification" else None
        if getattr(label, "dtype", "").startswith("float"):
            raise LorascopeError(
                f"task.label_field={task['label_field']} of {name} holds {label.dtype} values (regression); "
                "lorascope classifies: give a column of class labels"
            )


def check(task: dict) -> None:
    """Open task.dataset's metadata and check splits and fields: one LorascopeError line, or nothing."""
    ds = _datasets()
    with _quiet(ds), _reading(task):
        meta = _metadata(source(task), task.get("subset"), ds)
    _check(task, meta)


def open_splits(task: dict) -> dict:
    """{split: Dataset} of task.dataset, memory-mapped, checked against the task's splits and fields."""
    ds = _datasets()
    with _quiet(ds), _reading(task):
        splits = _open(source(task), task.get("subset"), ds)
    _check(task, _described(splits))
    return splits
