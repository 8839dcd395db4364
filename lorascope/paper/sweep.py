"""A sweep as the paper's analyses see it: complete runs by (rank, seed), modules by (layer, kind).

LoRA runs that train one factor only (`lora.train_A=false`: A stays at A0, Zhu et al. 2024's test;
`lora.train_B=false`) are another experiment: they are held apart by variant (`Sweep.variants`,
`Sweep.frozen_A`), keyed by (rank, seed) like the runs, and no figure of the paper's Section 7 reads
them (`runs`, `ranks`, `seeds`, `modules` are the runs that train both factors)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lorascope.base_identity import disagreement, recorded
from lorascope.config import FROZEN_A, lora_variant
from lorascope.errors import LorascopeError
from lorascope.names import layer_index, module_kind
from lorascope.run_format import Run, read_summary
from lorascope.runs import list_runs, load_run, parse_run_name

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """The complete runs of one sweep folder: LoRA runs keyed by (rank, seed), full fine-tuning runs
    by seed, and LoRA runs that froze a factor by variant (FROZEN_A, FROZEN_B), then (rank, seed)."""

    path: Path
    runs: dict[tuple[int, int], Run]
    skipped: dict[str, str] = field(default_factory=dict)  # run folder -> why it is not analysed
    full: dict[int, Run] = field(default_factory=dict)
    variants: dict[str, dict[tuple[int, int], Run]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        path = Path(path)
        folders = list_runs(path)
        if not folders:
            raise LorascopeError(f"{path}: holds no runs (train some with `python sweep.py rank=1,4,8,64`)")
        found: dict[tuple[int, int], Run] = {}
        full: dict[int, Run] = {}
        variants: dict[str, dict[tuple[int, int], Run]] = {}
        skipped: dict[str, str] = {}
        for folder in folders:
            try:  # one unreadable run is reported and left out, never fatal for the sweep
                status = read_summary(folder).get("status", "incomplete")
                if status != "complete":
                    reason = read_summary(folder).get("reason")
                    skipped[folder.name] = f"status {status}" + (f" ({reason})" if reason else "")
                    continue
                run = load_run(folder)
            except LorascopeError as e:
                skipped[folder.name] = str(e)
                continue
            first = [*found.values(), *full.values(), *(r for v in variants.values() for r in v.values())]
            other = _other_base(run, next(iter(first), None))
            if other:
                skipped[folder.name] = other
                continue
            variant = variant_of(run)
            if run.method == "full":
                table, key = full, _seed_of(run)
            else:
                table = variants.setdefault(variant, {}) if variant else found
                key = (run.rank, _seed_of(run))
            if key in table:
                skipped[folder.name] = f"same method, variant, rank and seed as {table[key].name}"
                continue
            table[key] = run
        if not found:
            why = [f"{k}: {v}" for k, v in skipped.items()]
            why += [
                f"{r.name}: trains one factor only (its twin: `python sweep.py rank={rank} seed={seed}`)"
                for t in variants.values()
                for (rank, seed), r in t.items()
            ]
            raise LorascopeError(
                f"{path}: no complete LoRA run training both factors ({', '.join(why) or 'none'})"
            )
        for name, why in skipped.items():
            log.warning("skipping %s: %s", name, why)
        variants = {v: dict(sorted(t.items())) for v, t in sorted(variants.items())}
        return cls(path, dict(sorted(found.items())), skipped, dict(sorted(full.items())), variants)

    @property
    def frozen_A(self) -> dict[tuple[int, int], Run]:
        """The runs trained with A frozen at its start A0 (`lora.train_A=false`), by (rank, seed)."""
        return self.variants.get(FROZEN_A, {})

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ranks(self) -> list[int]:
        return sorted({r for r, _ in self.runs})

    def seeds(self, rank: int) -> list[int]:
        return sorted(s for r, s in self.runs if r == rank)

    def run(self, rank: int, seed: int | None = None) -> Run:
        seeds = self.seeds(rank)
        if not seeds:
            raise LorascopeError(f"{self.path}: no complete run at rank {rank} (ranks: {self.ranks})")
        if seed is None:
            seed = seeds[0]
        if seed not in seeds:
            raise LorascopeError(f"{self.path}: no complete run at rank {rank}, seed {seed} (seeds: {seeds})")
        return self.runs[(rank, seed)]

    @cached_property
    def modules(self) -> list[str]:
        """Modules every complete run adapts, in the first run's order."""
        first, *rest = self.runs.values()
        common = [m for m in first.adapters if all(m in r.adapters for r in rest)]
        if not common:
            raise LorascopeError(f"{self.path}: its runs adapt no module in common")
        return common

    @cached_property
    def kinds(self) -> list[str]:
        """Module kinds in model order, e.g. ["attention.self.query", "attention.self.value"]."""
        return list(dict.fromkeys(module_kind(m) for m in self.modules))

    @cached_property
    def layers(self) -> list[int]:
        return sorted({i for m in self.modules if (i := layer_index(m)) is not None})

    @property
    def middle_layer(self) -> int:
        """The paper shows layer 48 of GPT-3's 96; we take the middle one likewise."""
        return self.layers[len(self.layers) // 2] if self.layers else 0

    def module(self, layer: int, kind: str) -> str:
        for m in self.modules:
            if module_kind(m) == kind and layer_index(m) == layer:
                return m
        raise LorascopeError(
            f"{self.path}: no module of kind {kind} at layer {layer} (layers: {self.layers})"
        )


def _other_base(run: Run, first: Run | None) -> str | None:
    """Why `run` was not trained on the base of `first` (their recorded ‖W‖_F differ), or None."""
    if first is None:
        return None
    found = disagreement(recorded(run), recorded(first))
    if found is None:
        return None
    m, a, b = found
    return f"trained on another base than {first.name} (‖W‖_F of {m}: {a:.6g} vs {b:.6g})"


def variant_of(run: Run) -> str:
    """'' for a run that trains both factors (and for full fine-tuning, PEFT folders, old runs whose
    header does not say), FROZEN_A / FROZEN_B for one that froze A / B (its header's train_A, train_B)."""
    return lora_variant(run.meta.get("train_A", True), run.meta.get("train_B", True))


def _seed_of(run: Run) -> int:
    parsed = parse_run_name(run.name)
    seed = run.meta.get("seed", run.config.get("seed"))
    if seed is None and parsed:
        seed = parsed[1]
    return int(seed or 0)
