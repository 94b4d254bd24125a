"""Atomic, resumable checkpoints, and what a training checkpoint holds.

A checkpoint is a directory ``checkpoints/step-NNNNNNN`` written in full under a temporary name, every file
fsynced, and then renamed into place (`atesd.files.publish_directory`): any ``step-*`` directory is complete,
so the newest of them is the one to resume from, and a kill at any moment of a save leaves at worst a stray
temporary that the next save removes. The file ``checkpoints/latest`` names the newest one for people and
tools; nothing reads it back as a path. When the newest checkpoint cannot be read (a damaged disk, a file
edited by hand), `resume_from_checkpoint` warns and falls back to the one before it. Everything is
safetensors or JSON (see `state_io`), never a pickle, and a checkpoint never holds a non-finite weight.

A training checkpoint (`write_training_state` / `read_training_state`) holds the trained parameters
(``model.safetensors``), the optimizer, the exposure policy, the teacher (EMA weights), the RNG states of
python, numpy and torch, and ``trainer_state.json`` (step, data position, the update's counters and schedule,
the last probe NLL): everything a resumed run needs to continue exactly as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from atesd.errors import UserError
from atesd.files import atomic_write_text, publish_directory, remove_strays, temporary_path
from atesd.train.state_io import load_state, save_state
from atesd.train.update import NonFiniteWeightsError

logger = logging.getLogger(__name__)

LATEST = "latest"
STEP_NAME = re.compile(r"step-(\d{7})")
TRAINER_STATE_KEYS = ("step", "data_position", "skipped_steps", "consecutive_bad_steps", "scheduler",
                      "last_probe_nll")


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not fit the run; the message names the file."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call ``write(directory)`` on a fresh temporary directory, then publish it as the checkpoint of `step`."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    temporary = temporary_path(final)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    write(temporary)
    publish_directory(temporary, final)  # the same step saved again after a resume is swapped in whole
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, protect=final)
    return final


def _prune(root: Path, keep: int, protect: Path) -> None:
    for old in checkpoints(root.parent)[keep:]:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)
    remove_strays(root)  # temporaries of interrupted saves (of checkpoints and of `latest`)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's published checkpoints, newest first."""
    root = checkpoint_dir(run_dir)
    found = [path for path in root.iterdir() if STEP_NAME.fullmatch(path.name) and path.is_dir()] \
        if root.is_dir() else []
    return sorted(found, key=lambda path: path.name, reverse=True)


def checkpoint_step(directory: Path) -> int:
    """The optimizer step a published checkpoint directory (``step-NNNNNNN``) was saved at."""
    match = STEP_NAME.fullmatch(directory.name)
    assert match is not None, f"{directory} is not a published checkpoint"
    return int(match.group(1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    found = checkpoints(run_dir)
    return found[0] if found else None


def resume_from_checkpoint(run_dir: Path, load: Callable[[Path], None]) -> Path:
    """``load`` the newest checkpoint that can be read, falling back (with a warning) to older ones; returns it.

    `load` raises `CheckpointError`, or the KeyError, ValueError or TypeError of a state that does not fit,
    for a checkpoint it cannot use."""
    failures = []
    for directory in checkpoints(run_dir):
        try:
            load(directory)
        except (CheckpointError, KeyError, ValueError, TypeError) as error:
            failures.append(f"{directory.name}: {error}")
            logger.warning("cannot resume from %s (%s); trying the checkpoint before it", directory, error)
            continue
        return directory
    if not failures:
        raise FileNotFoundError(f"--resume: {run_dir} has no checkpoint to resume from")
    raise CheckpointError(f"--resume: no checkpoint of {run_dir} can be read ({'; '.join(failures)}); start a "
                          "new run (another run.name)")


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
    for part, tensors in (("model", state.weights), ("teacher", state.teacher)):
        bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
        if bad:  # the update guards against this; a checkpoint must never hold such weights either way
            raise NonFiniteWeightsError(f"refusing to checkpoint non-finite {part} weights ({', '.join(bad[:3])}); "
                                        "the last checkpoint is intact")
    save_file(state.weights, str(directory / "model.safetensors"))
    save_state(state.optimizer, directory, "optimizer")
    save_state(state.exposure, directory, "exposure")
    save_state(state.teacher, directory, "teacher")
    save_state({"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.random.get_rng_state()}, directory, "rng")
    (directory / "trainer_state.json").write_text(json.dumps(state.trainer, indent=2))


def _reader(directory: Path) -> Callable[[str, Callable[[], Any]], Any]:
    """``read(name, reader)``: `reader()`, with any failure a `CheckpointError` naming ``directory/name``."""
    def read(name: str, reader: Callable[[], Any]) -> Any:
        try:
            return reader()
        except (OSError, SafetensorError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{directory / name} cannot be read ({type(error).__name__}: {error})") from None
    return read


def read_checkpoint_weights(directory: Path, expected_weights: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The trained parameters saved in `directory`, which must have exactly the names and shapes of
    `expected_weights` (the parameters being trained: all of them, or the adapter's)."""
    weights = _reader(directory)("model.safetensors", lambda: load_file(str(directory / "model.safetensors")))
    shapes = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    expected = {name: tuple(shape) for name, shape in expected_weights.items()}
    if shapes != expected:
        wrong = sorted(name for name in expected.keys() & shapes.keys() if expected[name] != shapes[name])
        raise CheckpointError(f"{directory}/model.safetensors does not match the model: missing "
                              f"{sorted(expected.keys() - shapes.keys())[:5]}, unexpected "
                              f"{sorted(shapes.keys() - expected.keys())[:5]}, other shapes {wrong[:5]}")
    return weights


def read_training_state(directory: Path, expected_weights: dict[str, torch.Size]) -> TrainingState:
    """The state saved in `directory`; restores the RNG states once every part has been read.
    `expected_weights` are the names and shapes of the parameters being trained, which the checkpoint's weights
    must match. Any file that cannot be read is a `CheckpointError` naming it."""
    read = _reader(directory)
    weights = read_checkpoint_weights(directory, expected_weights)
    trainer = read("trainer_state.json", lambda: json.loads((directory / "trainer_state.json").read_text()))
    missing = [key for key in TRAINER_STATE_KEYS if not isinstance(trainer, dict) or key not in trainer]
    if missing:
        raise CheckpointError(f"{directory}/trainer_state.json lacks {', '.join(missing)}")
    parts = {name: read(f"{name}.json", functools.partial(load_state, directory, name))
             for name in ("optimizer", "exposure", "teacher", "rng")}
    rng = parts["rng"]

    def restore_rng() -> None:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.random.set_rng_state(rng["torch"])

    read("rng.json", restore_rng)
    return TrainingState(weights=weights, optimizer=parts["optimizer"], exposure=parts["exposure"],
                         teacher=parts["teacher"], trainer=trainer)
