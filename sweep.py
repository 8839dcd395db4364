"""Train LoRA adapters in a Hydra sweep: `python sweep.py rank=1,4,8,64` (multirun without -m).

Configuration: conf/config.yaml (schema: lorascope/config.py). Runs land in
runs/<model>-<task>/r<rank>-s<seed>/; complete runs with the same config are skipped.
"""

import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lorascope import config, slurm
from lorascope.models import cache_dir

config.register()
slurm.register()  # hydra/launcher=submitit_slurm: an sbatch refusal in one line, job states from squeue


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    from lorascope.train import launch  # after Hydra has parsed the command line: fast --help

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:  # e.g. model=hf without model.name_or_path
        summary = {"status": "failed", "reason": f"config: {str(e).splitlines()[0]}"}
    else:
        summary = launch(plain, run_dir)
    config.record_outcome(run_dir, summary)
    return summary["status"]


if __name__ == "__main__":
    if config.LEDGER_ENV not in os.environ:
        ledger = cache_dir() / "sweeps" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
        ledger.parent.mkdir(parents=True, exist_ok=True)
        os.environ[config.LEDGER_ENV] = str(ledger)
    main()
