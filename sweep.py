"""Train LoRA adapters in a Hydra sweep: `python sweep.py rank=1,4,8,64` (multirun without -m).

Configuration: conf/config.yaml (schema: lorascope/config.py). Runs land in
runs/<model>-<task>/r<rank>-s<seed>/; complete runs with the same config are skipped.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lorascope import hydra_glue
from lorascope.errors import LorascopeError
from lorascope.overrides import check_overrides

hydra_glue.register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from lorascope.launch import launch  # after Hydra has parsed the command line: a fast --help

    # The summary goes back to Hydra as the job's return value; SweepReport.on_job_end records it.
    return launch(hydra_glue.plain_config(cfg), Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    # Every sweep is a multirun (conf/config.yaml says so), but Hydra learns that only by composing the
    # config; when composing fails (a missing preset) it falls back to a single run and reports a
    # comma list as "ambiguous" instead of the real error. Saying --multirun up front keeps the error.
    if not {"-m", "--multirun"} & set(sys.argv[1:]):
        sys.argv.insert(1, "--multirun")
    try:  # a key typo, a wrong type or a bad swept value: one line before Hydra composes anything
        check_overrides(sys.argv[1:])
    except LorascopeError as e:
        print(f"lorascope: error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
