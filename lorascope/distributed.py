"""Several processes per run, through torch.distributed: who this process is, and the few collectives
training needs.

    world = World.from_env()          # rank, size: torchrun's RANK/WORLD_SIZE, SLURM's tasks, or 1 process
    world.init(device)                # the process group (gloo on CPU, nccl on CUDA), once per process
    world.sums(loss, tokens)          # sums over the ranks, on every rank, in one collective
    world.broadcast(obj)              # rank 0's decision (train, resume, skip) reaches every rank

Three ways to get N processes for one run:
  torchrun --nproc-per-node=N sweep.py ...     torchrun starts them; every rank runs the same sweep
  python sweep.py train.devices=N ...          the job starts ranks 0..N-1 and watches them (`spawned`)
  SLURM, hydra.launcher.tasks_per_node=N       the N tasks of one job (submitit sets the environment)

Rank 0 alone writes the run folder, under its lock (held by rank 0, or with train.devices by the job that
started it); the others compute. Each rank takes its
contiguous share of the global batch, so the data order of the global batch is one process's.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorascope.errors import LorascopeError

if TYPE_CHECKING:  # imported where used: the sweep's callback asks `env_rank` before anything loads
    import torch

log = logging.getLogger(__name__)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def env_rank() -> int:
    """This process's rank as its launcher set it (torchrun's RANK, a SLURM task's SLURM_PROCID), else 0."""
    return _env_int("RANK") or _env_int("SLURM_PROCID") or 0


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank in [0, size), its rank on this node (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> World:
        """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else the tasks of a SLURM job step (submitit runs
        one task per process), else one process."""
        size = _env_int("WORLD_SIZE")
        if size and size > 1:
            return cls(_env_int("RANK") or 0, size, _env_int("LOCAL_RANK") or 0)
        ntasks = _env_int("SLURM_NTASKS")
        if ntasks and ntasks > 1 and _env_int("SLURM_PROCID") is not None:
            _slurm_rendezvous()
            return cls(_env_int("SLURM_PROCID") or 0, ntasks, _env_int("SLURM_LOCALID") or 0)
        return cls()

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: a bare "cuda" means the GPU of its local rank (one GPU per process)."""
        import torch

        if device.type == "cuda" and self.distributed and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    # ------------------------------------------------------------------ the process group

    def init(self, device: torch.device) -> None:
        """Join the run's process group (env:// rendezvous: MASTER_ADDR, MASTER_PORT), once."""
        import torch
        import torch.distributed as dist

        if not self.distributed or dist.is_initialized():
            return
        device = self.device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            raise LorascopeError("torch.distributed needs MASTER_PORT (torchrun and train.devices set it)")
        dist.init_process_group(backend, rank=self.rank, world_size=self.size)
        log.info("rank %d of %d joined the process group (%s)", self.rank, self.size, backend)

    def sums(self, *values: float) -> list[float]:
        """Each value summed over the ranks (every rank gets the sums), in one all-reduce."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a picklable Python value: decisions, summaries)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    def share(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's contiguous rows of a global batch (size divisible by the number of ranks)."""
        if not self.distributed:
            return batch
        n = next(iter(batch.values())).shape[0]
        if n % self.size:
            raise LorascopeError(f"a batch of {n} does not split over {self.size} processes")
        k = n // self.size
        return {key: v[self.rank * k : (self.rank + 1) * k] for key, v in batch.items()}

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Mean of each parameter's gradient over the ranks (the trainables FSDP leaves unsharded)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.size)


def _collective_device() -> torch.device:
    import torch
    import torch.distributed as dist

    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def _slurm_rendezvous() -> None:
    """MASTER_ADDR/MASTER_PORT for the tasks of a SLURM job: the job's first node, a port from its id."""
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
        try:  # submitit parses SLURM's compressed node lists (node[01-04]) as sbatch would
            from submitit.slurm.slurm import _parse_node_list

            first = _parse_node_list(nodes)[0]
        except Exception:
            first = nodes.split(",")[0]
        os.environ["MASTER_ADDR"] = first
    job = _env_int("SLURM_JOB_ID") or 0
    os.environ.setdefault("MASTER_PORT", str(20000 + job % 20000))


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of the processes `spawn_ranks` starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_devices(devices: int, device: str, strategy: str) -> None:
    """Refuse a process count the machine cannot give, or FSDP on one process (one line each)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE") or 1)
    if strategy == "fsdp" and devices == 1 and world == 1:
        raise LorascopeError(
            "train.strategy=fsdp shards the base over several processes: set train.devices=N or use torchrun"
        )
    if devices == 1:
        return
    if world > 1:
        raise LorascopeError(
            f"train.devices={devices} under torchrun ({world} processes already): leave train.devices=1"
        )
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if wants_cuda else (os.cpu_count() or 1)
    if devices > have:
        what = "CUDA devices" if wants_cuda else "CPU cores"
        raise LorascopeError(f"train.devices={devices} but this machine has {have} {what}")
