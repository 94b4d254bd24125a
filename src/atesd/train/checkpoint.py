"""Atomic, resumable checkpoints.

A checkpoint is a directory ``checkpoints/step-NNNNNNN`` written in full under a temporary name and then
renamed into place; the file ``checkpoints/latest`` names the newest complete one and is itself replaced
atomically. A crash or Ctrl-C mid-write leaves at worst a stray temporary directory: ``latest`` still names
the previous, intact checkpoint. Everything is safetensors or JSON (see `state_io`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from atesd.train.state_io import atomic_write_text

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

