"""Run by test_fsdp.py under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` with 2 CPU processes:
trains a list of runs one after the other in the same two processes, each sharded with FSDP2 or, with FSDP
switched off for it, under DDP, and writes each run's trained parameters to ``<out>/<name>.rank<r>.safetensors``.

    python fsdp_worker.py JOBS.json

Each job is ``{"name", "config", "fsdp", "resume_from"}``. A job that resumes is first given the run directory of
``resume_from`` (another job's run) as it was at its step-2 checkpoint, as an interrupted run would have left it.
FSDP is switched off for a job by the environment variable that accelerate's launcher sets to switch it on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

import atesd.experiments  # noqa: F401  (registers the embedded testbed's model)
from atesd.config import load_config, save_config
from atesd.train.checkpoint import LATEST, checkpoints
from atesd.train.recipe import Trainer

INTERRUPTED_AT = "step-0000002"


def interrupted_copy(source: Path, target: Path, config) -> None:
    """`source` as it was when its step-2 checkpoint had just been written, under `target`'s run name."""
    shutil.copytree(source, target)
    for checkpoint in checkpoints(target):
        if checkpoint.name > INTERRUPTED_AT:
            shutil.rmtree(checkpoint)
    for final in target.glob("final_model*"):
        shutil.rmtree(final)
    (target / "checkpoints" / LATEST).write_text(INTERRUPTED_AT)
    save_config(config, target / "config.yaml")


def main(jobs_path: str) -> None:
    torch.set_num_threads(1)
    jobs = json.loads(Path(jobs_path).read_text())
    accelerator = Accelerator()  # first: it reads the launcher's CPU setting (ACCELERATE_USE_CPU)
    out = Path(jobs_path).parent
    for job in jobs:
        os.environ["ACCELERATE_USE_FSDP"] = "true" if job["fsdp"] else "false"
        config = load_config(job["config"])
        run_dir = Path(config.run.output_dir) / config.run.name
        if job["resume_from"] and accelerator.is_main_process:
            interrupted_copy(Path(config.run.output_dir) / job["resume_from"], run_dir, config)
        accelerator.wait_for_everyone()
        trainer = Trainer(config, resume=bool(job["resume_from"]), accelerator=accelerator)
        assert (trainer.sharding is not None) == job["fsdp"]
        trainer.train()
        weights = trainer.trainable_state()  # sharded: every process joins the gather
        save_file(weights, str(out / f"{job['name']}.rank{accelerator.process_index}.safetensors"))
        accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
