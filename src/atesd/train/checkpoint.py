"""Atomic, resumable checkpoints, and what a training checkpoint holds.

A checkpoint is a directory ``checkpoints/step-NNNNNNN`` written in full under a temporary name and then
renamed into place; the file ``checkpoints/latest`` names the newest complete one and is itself replaced
atomically. A crash or Ctrl-C mid-write leaves at worst a stray temporary directory: ``latest`` still names
the previous, intact checkpoint. Everything is safetensors or JSON (see `state_io`), never a pickle.

A training checkpoint (`write_training_state` / `read_training_state`) holds the trained parameters
(``model.safetensors``), the optimizer, the exposure policy, the teacher (EMA weights), the RNG states of
python, numpy and torch, and ``trainer_state.json`` (step, data position, the update's counters and schedule,
the last probe NLL): everything a resumed run needs to continue exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from atesd.files import atomic_write_text
from atesd.train.state_io import load_state, save_state

LATEST = "latest"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call ``write(directory)`` on a fresh temporary directory, then publish it as the checkpoint of `step`."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    temporary = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    write(temporary)
    if final.exists():  # the same step saved again after a resume: swap it out, then drop the old one
        stale = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, stale)
        os.replace(temporary, final)
        shutil.rmtree(stale)
    else:
        os.replace(temporary, final)
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, protect=final)
    return final


def _prune(root: Path, keep: int, protect: Path) -> None:
    published = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in published[:-keep]:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stray in root.glob(".step-*"):  # temporaries of interrupted saves
        shutil.rmtree(stray, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    pointer = checkpoint_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = checkpoint_dir(run_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist: the run directory was "
                                "edited by hand; point it at an existing step-* directory")
    return path



@dataclass
class TrainingState:
    """The parts of a training checkpoint, as the recipe hands them over and gets them back."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    exposure: dict[str, Any]
    teacher: dict[str, torch.Tensor]
    trainer: dict[str, Any]  # trainer_state.json


def write_training_state(directory: Path, state: TrainingState) -> None:
    """Write `state` and the current RNG states into `directory` (a fresh checkpoint directory)."""
    save_file(state.weights, str(directory / "model.safetensors"))
    save_state(state.optimizer, directory, "optimizer")
    save_state(state.exposure, directory, "exposure")
    save_state(state.teacher, directory, "teacher")
    save_state({"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.random.get_rng_state()}, directory, "rng")
    (directory / "trainer_state.json").write_text(json.dumps(state.trainer, indent=2))


def read_training_state(directory: Path, expected_weights: set[str]) -> TrainingState:
    """The state saved in `directory`; restores the RNG states. `expected_weights` are the names of the
    parameters being trained, which the checkpoint's weights must match."""
    weights = load_file(str(directory / "model.safetensors"))
    if set(weights) != expected_weights:
        raise ValueError(f"{directory}/model.safetensors does not match the model: missing "
                         f"{sorted(expected_weights - set(weights))[:5]}, unexpected "
                         f"{sorted(set(weights) - expected_weights)[:5]}")
    rng = load_state(directory, "rng")
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.random.set_rng_state(rng["torch"])
    return TrainingState(weights=weights, optimizer=load_state(directory, "optimizer"),
                         exposure=load_state(directory, "exposure"), teacher=load_state(directory, "teacher"),
                         trainer=json.loads((directory / "trainer_state.json").read_text()))
