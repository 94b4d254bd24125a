"""A run's directory: where it is, who owns it, the resolved config it writes there, and what ``--resume`` may
change (docs/reliability.md).

- One process owns a run directory at a time: the main process holds ``run.lock`` (its PID, host and start)
  under an OS file lock for the whole run. The kernel drops that lock when the process dies, however it dies,
  so the lock file a killed run leaves behind is recognised as stale and taken over with a warning; a start
  while the holder lives is refused, naming it.
- A new run refuses a directory that already holds checkpoints (pass ``--resume`` or another ``run.name``).
- A resumed run keeps the settings it was started with, except those that do not change what its finished steps
  computed (`RESUMABLE`, `check_resume`); ``config.yaml`` is rewritten, atomically, only with such changes.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import ModuleType

from atesd.config import Config, ConfigError, changed_keys, load_run_config, save_config
from atesd.errors import UserError
from atesd.files import atomic_write_text, remove_strays
from atesd.train.checkpoint import latest_checkpoint

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOCK_FILE = "run.lock"
NON_FINITE_STOP = "non_finite_stop.json"  # written when non-finite steps stop a run; lets the resume change train.lr
# Where a run lives, not what it computes: a moved run directory resumes.
LOCATION_KEYS = ("run.output_dir", "run.name", "model.embedded.cache_dir")
# Settings a resume may change: evaluation, checkpointing and location. train.steps may grow (a longer run),
# train.lr may change after non-finite steps stopped the run (the remedy the stop message gives).
# rollout.sampler, rollout.loop.cache and rollout.loop.drop_finished choose how the HF engine samples, not what: every
# variant samples the same tokens (tests/test_decode.py), so a resume may switch between them (rollout.loop.compile is
# not bit-identical to eager code, docs/performance.md).
RESUMABLE = ("eval.*", "train.checkpoint_every", "train.keep_checkpoints", "rollout.sampler", "rollout.loop.cache",
             "rollout.loop.drop_finished", *LOCATION_KEYS)


class RunDirectoryInUse(UserError):
    """Another process holds the run directory's lock."""


def run_directory(config: Config) -> Path:
    name = config.run.name or f"{config.method}-seed{config.run.seed}"
    return Path(config.run.output_dir) / name


class RunLock:
    """The lock of one run directory, held from `acquire` until `release` or the end of the process."""

    def __init__(self, path: Path, handle: int | None) -> None:
        self.path, self.handle = path, handle

    @classmethod
    def acquire(cls, run_dir: Path, name: str = LOCK_FILE,
                advice: str = "set run.name or run.output_dir for a new run") -> RunLock:
        """Lock `run_dir` (through its file `name`), or a `RunDirectoryInUse` naming the holder and `advice`."""
        path = run_dir / name
        if fcntl is None:
            logger.warning("%s: this platform has no file locks; make sure no other run uses %s", path, run_dir)
            return cls(path, None)
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.read(handle, 4096))
                os.close(handle)
                raise RunDirectoryInUse(
                    f"{run_dir} is in use by {holder or 'another process'} ({path}): wait for it to end or "
                    f"stop it, or {advice}") from None
            except OSError as error:  # a filesystem without locks (some network or FUSE mounts)
                logger.warning("%s: cannot lock (%s); make sure no other run uses %s", path, error, run_dir)
                return cls(path, handle)
            # The previous holder removes the file as it releases it: hold the file that is there now.
            try:
                if os.fstat(handle).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(handle)
        stale = _holder(os.read(handle, 4096))
        if stale:
            logger.warning("%s: taking over the stale lock of %s, which ended without releasing it", path, stale)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(info).encode(), 0)
        os.fsync(handle)
        return cls(path, handle)

    def release(self) -> None:
        if self.handle is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: whoever locks the old file next sees it is gone
        os.close(self.handle)
        self.handle = None


def _holder(content: bytes) -> str | None:
    try:
        info = json.loads(content)
        return f"PID {info['pid']} on host {info['host']} (since {info['started']})"
    except (ValueError, KeyError, TypeError):
        return None


def prepare_run_dir(run_dir: Path, config: Config, resume: bool) -> RunLock:
    """Take `run_dir` for `config` (started or resumed): lock it, check it may be used, and write the config.
    Returns the lock, which the caller releases when the run ends."""
    config_path = run_dir / CONFIG_FILE
    if resume and not config_path.is_file():
        raise FileNotFoundError(f"--resume: {config_path} does not exist; nothing to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock.acquire(run_dir)
    try:
        remove_strays(run_dir)
        stop = run_dir / NON_FINITE_STOP
        if resume:
            changed = check_resume(load_run_config(config_path), config, config_path, non_finite_stop=stop.is_file())
            if changed:
                logger.warning("--resume changes %s", ", ".join(changed))
                save_config(config, config_path)
            stop.unlink(missing_ok=True)
        elif latest_checkpoint(run_dir) is not None:
            raise ConfigError(f"{run_dir} already holds a run with checkpoints: pass --resume to continue it, "
                              "or set run.name / run.output_dir for a new one")
        else:
            save_config(config, config_path)
    except BaseException:
        lock.release()
        raise
    return lock


def check_resume(saved: Config, config: Config, source: Path, non_finite_stop: bool = False) -> list[str]:
    """The settings in which `config` differs from the run's `saved` config, when a resume may change them all;
    otherwise a ConfigError that lists the others with both values."""
    refused = [key for key in changed_keys(saved, config) if not (
        any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE)
        or (key == "train.steps" and config.train.steps > saved.train.steps)
        or (key == "train.lr" and non_finite_stop))]
    if refused:
        before, now = saved.model_dump(mode="json"), config.model_dump(mode="json")
        listed = "; ".join(f"{key}: {_at(before, key)!r} there, {_at(now, key)!r} now" for key in refused)
        raise ConfigError(
            f"--resume: the config differs from the run's {source} in {listed}. A resume may change only "
            f"{', '.join(RESUMABLE)}, train.steps (upward) and train.lr (after non-finite steps stopped the run): "
            "resume with the run's settings, or start a new run (another run.name)")
    return changed_keys(saved, config)


def _at(tree: object, dotted: str) -> object:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def record_non_finite_stop(run_dir: Path, step: int, message: str) -> None:
    """Note that non-finite steps stopped the run at `step`, so that its resume may lower train.lr."""
    atomic_write_text(run_dir / NON_FINITE_STOP, json.dumps({"step": step, "message": message}))
