"""The sweep's Hydra sweeper: Hydra's basic sweeper, launching each distinct run once.

`python sweep.py method=lora,full rank=1,8` is a product of 4 jobs, but full fine-tuning has no rank:
both of its jobs compose the same run folder (`full-s0`) with the same experiment. Launching both
makes the second wait on the run's lock or find it done, and the sweep report list it twice. This
sweeper composes each job's config before launching (Hydra's basic sweeper composes them anyway, to
validate the batch) and drops a job whose run folder and experiment repeat an earlier job's. Jobs
that share a folder but differ in what they compute are all launched: the run's own lock and
config check then say that the folder is taken (`lorascope.launch`).

Selected in conf/config.yaml (`override hydra/sweeper: lorascope`). Hydra instantiates sweepers only
from the `hydra_plugins` namespace package, and finds this one (and its config, stored below) by
scanning that package: sweep.py's folder is on the path, and `pip install` installs it too.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lorascope.config import comparable, from_dict, to_dict

log = logging.getLogger(__name__)


@dataclass
class OnceSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.lorascope_sweeper.once_sweeper.OnceSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="lorascope", node=OnceSweeperConf, provider="lorascope"
)


def run_identity(job_config) -> tuple[str, str] | None:
    """(run folder, experiment) of a composed job config; None where it cannot be told (then the job
    is launched, and reports its own error)."""
    try:
        folder = Path(job_config.hydra.sweep.dir) / str(job_config.hydra.sweep.subdir)
        plain = {k: v for k, v in OmegaConf.to_container(job_config, resolve=False).items() if k != "hydra"}
        experiment = comparable(to_dict(from_dict(plain)))
    except Exception:  # a job that cannot compose (LorascopeError, ...) is launched and fails on its own
        return None
    return str(folder), repr(sorted(experiment.items()))


class OnceSweeper(BasicSweeper):
    """BasicSweeper that launches one job per distinct (run folder, experiment) of the whole sweep."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self._seen: dict[tuple[str, str], Sequence[str]] = {}

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        batch = super().get_job_batch()
        kept = []
        for overrides in batch:
            identity = run_identity(self._compose(overrides))
            if identity is not None and identity in self._seen:
                log.info(
                    "not launching %s: the same run (%s) as %s",
                    self._swept(overrides), Path(identity[0]).name, self._swept(self._seen[identity]),
                )  # fmt: skip
                continue
            if identity is not None:
                self._seen[identity] = overrides
            kept.append(overrides)
        return kept

    def _swept(self, overrides: Sequence[str]) -> str:
        """A job's overrides less those every job of the sweep has: `method=full rank=8`."""
        jobs = [job for batch in self.overrides or () for job in batch]
        common = set.intersection(*(set(job) for job in jobs)) if jobs else set()
        return " ".join(o for o in overrides if o not in common)

    def _compose(self, overrides: Sequence[str]) -> Any:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(
            master_config=self.config, sweep_overrides=list(overrides)
        )
