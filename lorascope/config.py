"""The sweep's config schema: plain dataclasses, built and checked by OmegaConf's structured configs.

    cfg = from_dict({"rank": 4, "train": {"steps": 10}})   # a SweepConfig; defaults fill the rest
    to_dict(cfg)                                           # the nested dict a run saves as config.yaml

`lorascope.train.train` takes a `SweepConfig` (or such a dict) from a notebook as well as from a sweep.
Types are checked and interpolations (`${model.targets}`, `r${rank}-s${seed}`) resolved by OmegaConf,
the same machinery Hydra uses when it composes conf/config.yaml against this schema; the value checks
that types cannot express (rank ≥ 1, lr > 0, ...) live in `check`. Hydra itself is not imported here:
the glue (ConfigStore, the sweep report) is `lorascope.hydra_glue`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lorascope.errors import LorascopeError


@dataclass
class ModelConfig:
    name: str = "minilm"  # short name, used in the sweep folder name
    name_or_path: str = "minilm"  # preset (minilm, smollm2), a local save_pretrained folder, or a hub id
    targets: Any = field(default_factory=lambda: ["query", "value"])  # the model's W_q, W_v suffixes
    # The base's storage precision: auto (the checkpoint's stored dtype, as transformers' dtype="auto")
    # | bf16 | fp16 | fp32. LoRA factors, their AdamW state and a classification head stay fp32.
    dtype: str = "auto"
    quantization: str | None = None  # nf4 | int8: a bitsandbytes-quantized base (QLoRA); null: none


@dataclass
class TaskConfig:
    name: str = "bbc"  # short name, used in the sweep folder name
    source: str = "bbc"  # bbc | plays | shakespeare | text | hf (Hugging Face `datasets`, offline)
    kind: str | None = None  # classification | lm | instruction; None: from the fields given
    path: str | None = None  # text source: a .jsonl, a .txt, or a folder of .txt files
    text_field: str = "text"  # .jsonl / hf: the field holding the text
    label_field: str | None = None  # .jsonl / hf: the field holding the class label (classification)
    # hf: a dataset id in the local HF cache (nyu-mll/glue), a save_to_disk folder, a folder of data
    # files, or data files (.parquet, .csv, .json, .jsonl; a glob)
    dataset: str | None = None
    subset: str | None = None  # hf: the dataset's config name (GLUE: mnli, rte, ...)
    split: str = "train"  # hf: the training split
    # hf: the validation split; None: the first of validation, validation_matched, valid, val, dev that
    # exists, else val_fraction of `split` held out by split_seed (as with val_split equal to split)
    val_split: str | None = None
    text_pair_field: str | None = None  # hf: the second text of a pair (MNLI: hypothesis), classification
    prompt_field: str | None = None  # hf instruction tuning: the prompt (its tokens carry no loss)
    response_field: str | None = None  # hf instruction tuning: the response (the loss is on its tokens)
    chat_template: bool | None = None  # hf instruction: apply the tokenizer's chat template (None: if any)
    val_fraction: float = 0.2  # held-out fraction of examples (classification) or blocks (lm)
    split_seed: int = 0  # the train/validation split is fixed by this seed, not by `seed`
    max_val: int | None = None  # cap on validation examples/blocks, to keep evaluation fast


@dataclass
class LoraConfig:
    targets: Any = "${model.targets}"  # suffix list ([query, value]) or one regex string
    init: str = "kaiming"  # kaiming (PEFT/loralib) | gaussian (N(0, 1/r)) | pissa | milora | olora (move W)
    dora: bool = False  # DoRA: a trained magnitude per output unit of W + s·B A (Liu et al. 2024)
    rslora: bool = False  # scaling α/√r instead of α/r
    dropout: float = 0.0  # dropout on the LoRA branch input
    lr_ratio: float = 1.0  # B's learning rate = lr_ratio × A's (LoRA+, Hayou et al. 2024, use ~16)
    train_A: bool = True  # false: A stays at its initialisation A0 (only B learns)
    train_B: bool = True  # false: B stays 0 ... so ΔW stays 0; for asymmetry studies with train_A
    allow_rank_above_dim: bool = False  # a rank above a target's min(in, out) is refused unless true


@dataclass
class FullConfig:
    targets: Any = "${lora.targets}"  # modules whose W is trained densely: LoRA's by default, or a regex
    lr: float = 1e-3  # AdamW peak learning rate of full fine-tuning (the head keeps train.lr)


@dataclass
class TrainConfig:
    steps: int = 60  # the default sweep (ranks 1, 4, 8, 64 on BBC) fits in 10 min on 2 CPU cores
    lr: float = 3e-3  # AdamW peak learning rate
    batch_size: int = 16
    seq_len: int = 128  # tokens per example (classification: truncation; lm: block length)
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps of linear warm-up, then linear decay to 0
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    diverge_factor: float = 10.0  # a training loss above this × the first step's loss fails the run
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    eval_batch_size: int = 64
    snapshot_every: int = 0  # save factors to checkpoints/step-<N>/ every N steps (0: never)
    log_every: int = 10  # metrics.jsonl line every N steps
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    dtype: str = "fp32"  # fp32 | bf16 (autocast; factors stay fp32) | fp16 (CUDA autocast)
    threads: int = 0  # torch CPU threads (0: torch's default)
    grad_checkpointing: bool = False  # recompute activations in backward (transformers', non-reentrant)
    devices: int = 1  # processes of one run on this node (torch.distributed; torchrun sets its own)
    strategy: str = "ddp"  # ddp (replicate the model) | fsdp (shard the frozen base over the processes)
    fail_at_step: int | None = None  # testing aid: raise at this step to exercise failure handling


@dataclass
class CsvLogger:
    file: str = "metrics.csv"  # in the run folder: metrics.jsonl as one table (a column per key)


@dataclass
class TensorBoardLogger:
    log_dir: str | None = None  # None: the run folder (`tensorboard --logdir runs/<sweep>` shows every run)


@dataclass
class MlflowLogger:
    tracking_uri: str | None = None  # None: sqlite:///<sweep folder>/mlflow.db
    experiment: str | None = None  # None: the sweep's name


@dataclass
class WandbLogger:
    project: str = "lorascope"
    entity: str | None = None
    mode: str = "offline"  # offline (default: nothing leaves the machine; `wandb sync` later) | online
    dir: str | None = None  # None: the sweep folder (W&B writes its wandb/ folder there)


@dataclass
class LoggerConfig:
    """Experiment trackers that mirror metrics.jsonl (which stays the record every analysis reads).

    conf/logger/ selects them: `logger=tensorboard`, `logger=[tensorboard,mlflow]`; null is off."""

    csv: CsvLogger | None = None
    tensorboard: TensorBoardLogger | None = None
    mlflow: MlflowLogger | None = None
    wandb: WandbLogger | None = None


# The package each tracker imports, and the extra that installs it.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass
class SweepConfig:
    method: str = "lora"  # lora | full (full fine-tuning of the targets' W: one run per seed, no rank)
    rank: int | None = 8  # LoRA rank (null in a full fine-tuning run's saved config)
    alpha: float | None = 16.0  # fixed across ranks, as in the paper; s = α/r (α/√r with lora.rslora)
    seed: int = 0  # seeds LoRA init, head init, dropout and batch order
    runs_dir: str = "runs"
    name: str = "${model.name}-${task.name}"  # sweep folder under runs_dir
    # r{rank}-s{seed} (r{rank}-s{seed}-frozenA with lora.train_A=false, -frozenB with train_B=false), or
    # full-s{seed}; oc.select: a full fine-tuning run's lora may be null
    run_name: str = (
        "${run_folder:${method},${rank},${seed},"
        "${oc.select:lora.train_A,true},${oc.select:lora.train_B,true}}"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    lora: LoraConfig | None = field(default_factory=LoraConfig)  # null for method=full
    full: FullConfig | None = field(default_factory=FullConfig)  # null for method=lora
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


METHODS = ("lora", "full")
DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("nf4", "int8")
STRATEGIES = ("ddp", "fsdp")


FROZEN_A, FROZEN_B = "frozenA", "frozenB"  # the LoRA variants that train one factor only


def lora_variant(train_A=True, train_B=True) -> str:
    """'' for LoRA training both factors, FROZEN_A when A stays at A0 (Zhu et al. 2024's test: only B
    learns), FROZEN_B when B does: such runs are another experiment than r{rank}-s{seed} and get a
    folder (and a place in `lorascope.paper.sweep.Sweep`) of their own."""
    if not _as_bool(train_A):
        return FROZEN_A
    return FROZEN_B if not _as_bool(train_B) else ""


def _as_bool(x) -> bool:
    """A flag as a config, a resolver or a run header gives it; None (not recorded) reads as true."""
    if isinstance(x, str):
        return x.strip().lower() not in ("false", "0", "no")
    return x is None or bool(x)


def run_folder(method: str, rank, seed, train_A=True, train_B=True) -> str:
    """The run folder's name: r{rank}-s{seed} for LoRA (r{rank}-s{seed}-frozenA when A is frozen,
    -frozenB when B is), full-s{seed} for full fine-tuning (no rank, no factors)."""
    if method == "full":
        return f"full-s{seed}"
    variant = lora_variant(train_A, train_B)
    return f"r{rank}-s{seed}" + (f"-{variant}" if variant else "")


# `${run_folder:${method},${rank},${seed},…}` in the schema and in conf/config.yaml's Hydra settings.
if not OmegaConf.has_resolver("run_folder"):
    OmegaConf.register_new_resolver("run_folder", run_folder)


def times(a, b) -> float | None:
    """a · b, for α ∝ r in conf/experiment/paper_ranks_alpha.yaml (`${times:2.0,${rank}}`); None if
    either is None (a full fine-tuning run has no rank)."""
    return None if a is None or b is None else float(a) * float(b)


if not OmegaConf.has_resolver("times"):
    OmegaConf.register_new_resolver("times", times)


def dataset_name(dataset, subset=None) -> str:
    """task=hf's short name (the sweep folder's): the data set's last path part without its extension
    (a glob's folder), then the subset: nyu-mll/glue and mnli -> glue-mnli; /data/code.jsonl -> code."""
    path = PurePath(str(dataset or "hf").rstrip("/"))
    while path.parent != path and re.search(r"[*?\[]", path.name):
        path = path.parent
    stem = path.name.split(".")[0] if path.suffix else path.name
    return re.sub(r"[^\w.-]+", "_", "-".join(str(p) for p in (stem or "hf", subset) if p))


# `${dataset_name:${.dataset},${.subset}}` in conf/task/hf.yaml.
if not OmegaConf.has_resolver("dataset_name"):
    OmegaConf.register_new_resolver("dataset_name", dataset_name)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def from_dict(d: dict | SweepConfig | Any) -> SweepConfig:
    """A checked SweepConfig from a (possibly partial) nested dict, a DictConfig, or a SweepConfig.

    Unknown keys and wrong types are errors (OmegaConf's structured configs); interpolations are
    resolved; then `check` tests the values. Raises LorascopeError with one line."""
    if isinstance(d, SweepConfig):
        d = dataclasses.asdict(d)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), d)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise LorascopeError(f"config{f' key {key}' if key else ''}: {_first_line(e)}") from None
    if cfg.method not in METHODS:
        raise LorascopeError(f"method={cfg.method} is not one of {', '.join(METHODS)}")
    # What does not apply to a method is null, so a saved config says only what the run used, and two
    # full fine-tuning runs of one seed launched at different ranks are the same run.
    if cfg.method == "full":
        cfg.rank = cfg.alpha = cfg.lora = None
    else:
        cfg.full = None
    check(cfg)
    return cfg


def check(cfg: SweepConfig) -> None:
    """Value checks that types cannot express; one LorascopeError naming the key and what to give."""
    t = cfg.train
    lora = cfg.method == "lora"
    rules = [
        ("rank", not lora or (cfg.rank is not None and cfg.rank >= 1), "must be at least 1"),
        (
            "alpha",
            not lora or (cfg.alpha is not None and cfg.alpha != 0 and math.isfinite(cfg.alpha)),
            "must be a finite non-zero number",
        ),
        (
            "lora.lr_ratio",
            not lora or (cfg.lora.lr_ratio > 0 and math.isfinite(cfg.lora.lr_ratio)),
            "must be a finite positive number",
        ),
        (
            "lora.train_B",
            not lora or cfg.lora.train_A or cfg.lora.train_B,
            "and lora.train_A cannot both be false: nothing would train",
        ),
        (
            "full.lr",
            lora or (cfg.full.lr > 0 and math.isfinite(cfg.full.lr)),
            "must be a finite positive number",
        ),
        ("train.steps", t.steps >= 1, "must be at least 1"),
        ("train.lr", t.lr > 0 and math.isfinite(t.lr), "must be a finite positive number"),
        ("train.batch_size", t.batch_size >= 1, "must be at least 1"),
        ("train.seq_len", t.seq_len >= 1, "must be at least 1"),
        ("train.eval_batch_size", t.eval_batch_size >= 1, "must be at least 1"),
        ("train.warmup", 0 <= t.warmup < 1, "must be in [0, 1)"),
        ("train.grad_clip", t.grad_clip >= 0, "must be 0 (off) or positive"),
        ("train.diverge_factor", t.diverge_factor > 1, "must be above 1"),
        ("train.log_every", t.log_every >= 1, "must be at least 1"),
        ("train.eval_every", t.eval_every >= 0, "must be 0 (only at the end) or positive"),
        ("train.snapshot_every", t.snapshot_every >= 0, "must be 0 (never) or positive"),
        ("train.dtype", t.dtype in ("fp32", "bf16", "fp16"), "must be fp32, bf16 or fp16"),
        ("train.device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device), "must be auto, cpu or cuda[:N]"),
        ("model.dtype", cfg.model.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}"),
        (
            "model.quantization",
            cfg.model.quantization in (None, *QUANTIZATIONS),
            f"must be null or one of {', '.join(QUANTIZATIONS)}",
        ),
        (
            "model.quantization",
            cfg.model.quantization is None or importlib.util.find_spec("bitsandbytes") is not None,
            "needs bitsandbytes: pip install 'lorascope[qlora]'",
        ),
        (
            "model.quantization",
            cfg.model.quantization is None or lora,
            "cannot be used with method=full: full fine-tuning trains W itself, in full precision",
        ),
        ("train.devices", t.devices >= 1, "must be at least 1"),
        ("train.strategy", t.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}"),
        (
            "train.batch_size",
            t.devices < 1 or t.batch_size % t.devices == 0,
            f"must be a multiple of train.devices={t.devices}: each process takes an equal share",
        ),
        ("lora.dropout", not lora or 0 <= cfg.lora.dropout < 1, "must be in [0, 1)"),
        ("task.val_fraction", 0 < cfg.task.val_fraction < 1, "must be in (0, 1)"),
        (
            "task.kind",
            cfg.task.kind in (None, "classification", "lm", "instruction"),
            "must be classification, lm, instruction or null (from the fields given)",
        ),
        (
            "task.dataset",
            cfg.task.source != "hf" or cfg.task.dataset,
            "must be given with task=hf: a dataset id in the local Hugging Face cache, a save_to_disk "
            "folder, or data files (.parquet, .csv, .json, .jsonl, a glob)",
        ),
        (
            "task.response_field",
            not cfg.task.prompt_field or cfg.task.response_field,
            "must be given with task.prompt_field: instruction tuning puts the loss on the response",
        ),
        (
            "task.prompt_field",
            not cfg.task.response_field or cfg.task.prompt_field,
            "must be given with task.response_field",
        ),
        (
            "task.label_field",
            not (cfg.task.label_field and cfg.task.prompt_field),
            "and task.prompt_field exclude each other: classification or instruction tuning",
        ),
        (
            "task.text_pair_field",
            not cfg.task.text_pair_field or cfg.task.label_field,
            "needs task.label_field: sentence pairs are classified",
        ),
        (
            "task.source",
            cfg.task.source == "hf" or not (cfg.task.prompt_field or cfg.task.text_pair_field),
            "reads no prompt_field or text_pair_field: use task=hf (a .jsonl file works as task.dataset)",
        ),
    ]
    for key, ok, what in rules:
        if not ok:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            raise LorascopeError(f"{key}={value} {what}")
    for key, ok, what in choice_rules(cfg):
        if not ok:
            raise LorascopeError(f"{key}={_value(cfg, key)} {what}")
    check_trackers(cfg.logger)


def check_trackers(logger: LoggerConfig) -> None:
    """Each selected tracker's package is installed (looked up, not imported: imports are slow)."""
    if logger.wandb is not None and logger.wandb.mode not in ("offline", "online", "disabled"):
        raise LorascopeError(f"logger.wandb.mode={logger.wandb.mode} must be offline, online or disabled")
    for name, package in TRACKER_PACKAGES.items():
        if getattr(logger, name) is not None and importlib.util.find_spec(package) is None:
            raise LorascopeError(
                f"logger={name} needs the {package} package, which is not installed: "
                f"pip install 'lorascope[{name}]'"
            )


LORA_INITS = ("kaiming", "gaussian", "pissa", "milora", "olora")  # lorascope.lora.INITS
TASK_SOURCES = ("bbc", "plays", "shakespeare", "text", "hf")  # lorascope.data's readers


def _value(cfg: SweepConfig, key: str) -> Any:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _regex_ok(targets: Any) -> bool:
    """A string of targets is a regular expression: it must compile (a list holds suffixes)."""
    if not isinstance(targets, str):
        return True
    try:
        re.compile(targets)
    except re.error:
        return False
    return True


def choice_rules(cfg: SweepConfig) -> list[tuple[str, Any, str]]:
    """Named choices and signs checked when the config is composed, so that a bad one is one line
    before any model or data loads (not an error deep in training)."""
    t, lora = cfg.train, cfg.method == "lora"
    return [
        ("lora.init", not lora or cfg.lora.init in LORA_INITS, f"is not one of {', '.join(LORA_INITS)}"),
        (
            "lora.targets",
            not lora or _regex_ok(cfg.lora.targets),
            "is a regular expression that does not compile",
        ),
        (
            "full.targets",
            lora or _regex_ok(cfg.full.targets),
            "is a regular expression that does not compile",
        ),
        ("task.source", cfg.task.source in TASK_SOURCES, f"is not one of {', '.join(TASK_SOURCES)}"),
        (
            "task.max_val",
            cfg.task.max_val is None or cfg.task.max_val >= 1,
            "must be at least 1 (or null: all)",
        ),
        ("train.threads", t.threads >= 0, "must be 0 (torch's default) or positive"),
        (
            "train.weight_decay",
            t.weight_decay >= 0 and math.isfinite(t.weight_decay),
            "must be a finite number of at least 0",
        ),
    ]


def to_dict(cfg: SweepConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# Keys that do not change what a run computes: where it runs, how often and to what it reports. A complete run
# whose saved config differs from a relaunch only in these is the same experiment, and is skipped.
NOT_COMPUTED = ("runs_dir", "name", "run_name", "train.threads", "train.log_every", "train.eval_batch_size",
                "train.device", "logger")  # fmt: skip
NOT_COMPUTED += ("lora.allow_rank_above_dim",)  # it only permits a rank; what is computed stays the same


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config without the NOT_COMPUTED keys: two runs with equal `comparable` are one experiment."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in NOT_COMPUTED:
        group, _, leaf = key.rpartition(".")
        section = out.get(group) if group else out
        if isinstance(section, dict):
            section.pop(leaf, None)
    return out
