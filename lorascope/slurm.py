"""SLURM sweeps (hydra/launcher=submitit_slurm): what real clusters need on top of the plugin.

- sbatch refusing the jobs (a GPU asked of a CPU-only partition, an unknown partition, more memory
  than a node has) ends the sweep with one line naming sbatch's reason, not a traceback.
- Where sacct does not work (no accounting storage, slurmdbd down), submitit warns at every poll
  and never learns a job's state, so a job that SLURM ends before it writes its result (time
  limit, out of memory, scancel) would be waited for forever. Job states then come from squeue,
  and one line says so.

How: Hydra instantiates launchers only from the `hydra_plugins` namespace (and re-imports those
modules when it scans them), so lorascope cannot name a launcher class of its own. Instead
`register()` (called by sweep.py) stores a Hydra callback that conf/hydra/launcher/submitit_slurm.yaml
lists in its defaults; at the start of a SLURM sweep the callback wraps the plugin's
SlurmLauncher.launch and gives submitit's SLURM jobs another state watcher. Both reach into
submitit 1.5 (pinned in constraints.txt): the error of a failed sbatch call, and the watcher that
all SLURM jobs share as a class attribute. submitit is imported only when a SLURM sweep starts
(it takes a quarter of a second). Like lorascope.config, this module is Hydra glue.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import subprocess
import sys
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

# What the refusal line repeats of the request, when set: the usual causes of a refusal.
_ASKED = (
    "partition", "gpus_per_node", "gpus_per_task", "gres", "cpus_per_task", "mem_gb", "mem_per_cpu",
    "mem_per_gpu", "timeout_min", "qos", "account", "constraint",
)  # fmt: skip


def sbatch_reason(stderr: str) -> str:
    """sbatch's error lines as one: 'sbatch: error: X' and '... Batch job submission failed: Y' -> 'X; Y'."""
    reasons: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("sbatch: error:"):
            line = line.removeprefix("sbatch: error:").strip()
            line = line.removeprefix("Batch job submission failed:").strip()
            if line and line not in reasons:
                reasons.append(line)
    return "; ".join(reasons) or " ".join(stderr.split()) or "no reason given"


def refusal_message(stderr: str, params: dict[str, Any]) -> str:
    """The one line a user sees when sbatch refuses the sweep's jobs; params: the launcher's config."""
    asked = " ".join(f"{k}={params[k]}" for k in _ASKED if params.get(k) is not None)
    return (
        f"lorascope: sbatch refused the job: {sbatch_reason(stderr)} "
        f"(asked: {asked or 'nothing'}; change with hydra.launcher.<key>=<value>, null leaves it out)"
    )


def register() -> None:
    """Store the SLURM callback as hydra/callbacks/lorascope_slurm, for the submitit_slurm preset."""
    from hydra.core.config_store import ConfigStore

    node = {"_target_": f"{__name__}.SlurmCallback"}
    ConfigStore.instance().store(group="hydra/callbacks", name="lorascope_slurm", node=node)


class SlurmCallback(Callback):
    """Hydra callback of SLURM sweeps: installs what this module adds, after Hydra's plugin scan."""

    def on_multirun_start(self, config, **kwargs) -> None:
        install()


def install() -> None:
    """Wrap the plugin's SlurmLauncher.launch (idempotent; nothing to do without the plugin)."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    except ImportError:  # the `launchers` extra is not installed: there is no SLURM launcher to fix
        return
    if getattr(SlurmLauncher.launch, "lorascope", False):
        return
    plain_launch = SlurmLauncher.launch

    @functools.wraps(plain_launch)
    def launch(self, job_overrides, initial_job_idx):
        return _launch(plain_launch, self, job_overrides, initial_job_idx)

    launch.lorascope = True
    SlurmLauncher.launch = launch


def _launch(plain_launch, launcher, job_overrides, initial_job_idx):
    from submitit.core.utils import UncompletedJobError
    from submitit.slurm.slurm import SlurmJob

    watcher = squeue_watcher_class()
    if not isinstance(SlurmJob.watcher, watcher):
        SlurmJob.watcher = watcher()
    # submitit prints sbatch's stderr itself before it raises: hold stderr back while the sweep is
    # launched, so that a refusal shows once, as one line. Anything else is written out afterwards.
    held = io.StringIO()
    refused = None
    try:
        with contextlib.redirect_stderr(held):
            return plain_launch(launcher, job_overrides, initial_job_idx)
    except UncompletedJobError as e:
        refused = _sbatch_stderr(e)
        if refused is not None:
            raise SystemExit(refusal_message(refused, launcher.params)) from None
        # A job ended without its result (SLURM killed it, or it failed outside the run): submitit's
        # message names the job, its state and its logs; the frames of Hydra and submitit do not help.
        raise SystemExit(
            f"lorascope: a SLURM job ended without its result (the sweep's other jobs go on unwatched)\n{e}"
        ) from None
    finally:
        rest = held.getvalue()
        if refused:
            rest = rest.replace(refused.strip() + "\n", "")
        sys.stderr.write(rest)


def _sbatch_stderr(error: BaseException) -> str | None:
    """sbatch's stderr, if `error` is submitit's FailedJobError for a refused sbatch call.

    submitit raises that from the CalledProcessError of sbatch; a job that failed on the cluster
    raises FailedJobError (or UncompletedJobError) without that cause.
    """
    cause = error.__cause__
    if isinstance(cause, subprocess.CalledProcessError) and cause.cmd and cause.cmd[0] == "sbatch":
        return cause.stderr or str(error)
    return None


@functools.cache
def squeue_watcher_class() -> type:
    """submitit's SLURM job-state watcher, asking squeue where sacct does not answer.

    squeue knows a job until MinJobAge (300 s by default) after it ended. A job of ours that it no
    longer lists has ended: it is reported as ENDED, so that submitit looks for the job's result
    (and says it is missing) instead of waiting for it.
    """
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        def __init__(self, delay_s: int = 600) -> None:  # 600 s: submitit's own for SLURM jobs
            super().__init__(delay_s=delay_s)
            self.use_squeue: bool | None = None  # decided at the first poll

        def _make_command(self) -> list[str] | None:
            command = super()._make_command()  # the sacct call; None when no job is left to watch
            if command is None:
                return None
            if self.use_squeue is None:
                probe = subprocess.run(command, capture_output=True, text=True)
                self.use_squeue = probe.returncode != 0
                if self.use_squeue:
                    why = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
                    log.info("sacct does not work on this cluster (%s): job states come from squeue", why)
            if not self.use_squeue:
                return command
            # All of this user's jobs rather than --jobs=...: squeue fails on a list of forgotten ids.
            return [
                "squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N",
                f"--user={os.getuid()}",
            ]  # fmt: skip

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            if not self.use_squeue:
                return super().read_info(string)
            text = string.decode() if isinstance(string, bytes) else string
            info = super().read_info("JobID|State|NodeList\n" + text)  # sacct's header, for its parser
            for job_id in self._registered - self._finished:
                info.setdefault(job_id, {"JobID": job_id, "State": "ENDED", "NodeList": ""})
            return info

    return SqueueWatcher
