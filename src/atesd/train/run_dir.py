"""A run's directory: where it is, the resolved config it writes there, and the guard of ``--resume``.

A new run refuses a directory that already holds checkpoints (pass ``--resume`` or another ``run.name``); a
resumed run must have the settings it was started with, except more ``train.steps``.
"""

from __future__ import annotations

from pathlib import Path

from atesd.config import Config, ConfigError, changed_keys, load_config, save_config
from atesd.train.checkpoint import latest_checkpoint

CONFIG_FILE = "config.yaml"


def run_directory(config: Config) -> Path:
    name = config.run.name or f"{config.method}-seed{config.run.seed}"
    return Path(config.run.output_dir) / name


def prepare_run_dir(run_dir: Path, config: Config, resume: bool) -> None:
    """Check that `run_dir` may be used for `config` (started or resumed), create it, and write the config."""
    config_path = run_dir / CONFIG_FILE
    if resume:
        if not config_path.is_file():
            raise FileNotFoundError(f"--resume: {config_path} does not exist; nothing to resume")
        # extending a run (more train.steps) is allowed
        changed = changed_keys(load_config(config_path), config, ignore=("train.steps",))
        if changed:
            raise ConfigError(f"--resume: the config differs from the run's {config_path} in: "
                              f"{', '.join(changed)}; resume with the same settings or start a new run")
    elif latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds a run with checkpoints: pass --resume to continue it, "
                          "or set run.name / run.output_dir for a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config_path)
