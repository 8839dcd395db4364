"""The sweep's config schema, and the Hydra glue around it (the only library module that knows Hydra).

The dataclasses are plain Python: `lorascope.train.train` takes a `SweepConfig` (or the same
nested dict) from a notebook as well. `register()` puts the schema into Hydra's ConfigStore as
`lorascope_schema`, the first entry of conf/config.yaml's defaults list, so a wrong type on the
command line (`train.steps=ten`) fails at compose time. `SweepReport` is a Hydra callback that
prints what completed and failed at the end of a multirun and exits non-zero if anything failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

# conf/hydra/launcher/{joblib,submitit_slurm}.yaml share their names with the plugins' schemas, so
# Hydra type-checks them against those schemas: wanted here, but Hydra warns about it. Set here, not in
# sweep.py, so that launcher worker processes (which import this module for SweepReport) have it too.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")

LEDGER_ENV = "LORASCOPE_SWEEP_LEDGER"  # set by sweep.py: where each job appends its outcome


@dataclass
class ModelConfig:
    name: str = "minilm"  # short name, used in the sweep folder name
    name_or_path: str = "minilm"  # preset (minilm, smollm2), a local save_pretrained folder, or a hub id
    targets: Any = field(default_factory=lambda: ["query", "value"])  # the model's W_q, W_v suffixes


@dataclass
class TaskConfig:
    name: str = "bbc"  # short name, used in the sweep folder name
    source: str = "bbc"  # bbc | shakespeare | text
    kind: str | None = None  # classification | lm; None: classification when the data has labels
    path: str | None = None  # text source: a .jsonl, a .txt, or a folder of .txt files
    text_field: str = "text"  # .jsonl: the field holding the text
    label_field: str | None = None  # .jsonl: the field holding the class label (classification)
    val_fraction: float = 0.2  # held-out fraction of examples (classification) or blocks (lm)
    split_seed: int = 0  # the train/validation split is fixed by this seed, not by `seed`
    max_val: int | None = None  # cap on validation examples/blocks, to keep evaluation fast


@dataclass
class LoraConfig:
    targets: Any = "${model.targets}"  # suffix list ([query, value]) or one regex string
    init: str = "kaiming"  # kaiming (PEFT/loralib) | gaussian (N(0, 1/r))
    rslora: bool = False  # scaling α/√r instead of α/r
    dropout: float = 0.0  # dropout on the LoRA branch input


@dataclass
class TrainConfig:
    steps: int = 60  # the default sweep (ranks 1, 4, 8, 64 on BBC) fits in 10 min on 2 CPU cores
    lr: float = 3e-3  # AdamW peak learning rate
    batch_size: int = 16
    seq_len: int = 128  # tokens per example (classification: truncation; lm: block length)
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps of linear warm-up, then linear decay to 0
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    eval_batch_size: int = 64
    snapshot_every: int = 0  # save factors to checkpoints/step-<N>/ every N steps (0: never)
    log_every: int = 10  # metrics.jsonl line every N steps
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    dtype: str = "fp32"  # fp32 | bf16 (autocast; factors stay fp32) | fp16 (CUDA autocast)
    threads: int = 0  # torch CPU threads (0: torch's default)
    fail_at_step: int | None = None  # testing aid: raise at this step to exercise failure handling


@dataclass
class SweepConfig:
    rank: int = 8
    alpha: float = 16.0  # fixed across ranks, as in the paper; s = α/r (α/√r with lora.rslora)
    seed: int = 0  # seeds LoRA init, head init, dropout and batch order
    runs_dir: str = "runs"
    name: str = "${model.name}-${task.name}"  # sweep folder under runs_dir
    run_name: str = "r${rank}-s${seed}"  # run folder under the sweep folder
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def register() -> None:
    """Store the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="lorascope_schema", node=SweepConfig)


def from_dict(d: dict | SweepConfig) -> SweepConfig:
    """A SweepConfig from a (possibly partial) nested dict; unknown keys are an error.

    Interpolations must already be resolved; lora.targets falls back to model.targets.
    """
    if isinstance(d, SweepConfig):
        d = dataclasses.asdict(d)
    d = dict(d)
    parts = {"model": ModelConfig, "task": TaskConfig, "lora": LoraConfig, "train": TrainConfig}
    kw: dict[str, Any] = {}
    for key, value in d.items():
        if key in parts:
            sub = parts[key]
            known = {f.name for f in dataclasses.fields(sub)}
            extra = set(value or {}) - known
            if extra:
                raise LorascopeError(f"unknown config keys {key}.{', '.join(sorted(extra))}")
            kw[key] = sub(**(value or {}))
        elif key in {f.name for f in dataclasses.fields(SweepConfig)}:
            kw[key] = value
        else:
            raise LorascopeError(f"unknown config key {key!r}")
    cfg = SweepConfig(**kw)
    if isinstance(cfg.lora.targets, str) and "${" in cfg.lora.targets:
        cfg.lora.targets = cfg.model.targets
    for attr in ("name", "run_name"):
        value = getattr(cfg, attr)
        if "${" in value:  # only the defaults reach here unresolved
            value = value.replace("${model.name}", cfg.model.name).replace("${task.name}", cfg.task.name)
            value = value.replace("${rank}", str(cfg.rank)).replace("${seed}", str(cfg.seed))
            setattr(cfg, attr, value)
    return cfg


def to_dict(cfg: SweepConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


class SweepReport:
    """Hydra callback (the hydra.experimental.callback.Callback protocol): report the sweep's outcome.

    Each job appends {"run", "status", "reason"} to the ledger file named by $LORASCOPE_SWEEP_LEDGER;
    at the end of the multirun this logs one line per run and exits with status 1 if any failed.
    """

    def on_run_start(self, config, **kw) -> None: ...
    def on_run_end(self, config, **kw) -> None: ...
    def on_multirun_start(self, config, **kw) -> None: ...
    def on_job_start(self, config, **kw) -> None: ...
    def on_job_end(self, config, job_return, **kw) -> None: ...
    def on_compose_config(self, config, **kw) -> None: ...

    def on_multirun_end(self, config, **kw) -> None:
        ledger = os.environ.get(LEDGER_ENV)
        if not ledger or not Path(ledger).is_file():
            return
        rows = [json.loads(line) for line in Path(ledger).read_text().splitlines() if line.strip()]
        Path(ledger).unlink(missing_ok=True)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        log.info("sweep done: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for r in rows:
            log.info("  %-9s %s%s", r["status"], r["run"], f"  ({r['reason']})" if r.get("reason") else "")
        if counts.get("failed"):
            sys.exit(1)


def record_outcome(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Append one job's outcome to the sweep ledger (a no-op outside sweep.py)."""
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger:
        return
    row = {"run": str(run_dir), "status": summary.get("status"), "reason": summary.get("reason")}
    with open(ledger, "a") as f:  # one short line per job: appends from parallel jobs do not interleave
        f.write(json.dumps(row) + "\n")
