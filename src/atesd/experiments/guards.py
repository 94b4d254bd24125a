"""What the experiment commands (`atesd sweep`, `compare`, `testbed`) check before they start work, and hold
while they work (docs/reliability.md#experiments-and-evaluation):

- `guard_settings`: an out folder records the settings that made it, written only once every setting has been
  validated, and refuses other settings with one line saying what differs;
- `experiment_lock`: one command at a time per out folder;
- `existing_folder` / `writable_folder`: a folder a flag names exists, or can be written, before any work;
- `check_counts` / `distinct`: counts are at least 1 and bounded; a flag's values given twice are
  refused rather than counted twice;
- `read_json`: a result file that cannot be read is an error naming it, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from atesd.config import ConfigError
from atesd.errors import UserError
from atesd.files import atomic_write_text, temporary_path
from atesd.train.run_dir import RunLock

T = TypeVar("T")


def report_or_warn(what: str, make: Callable[[], T]) -> T | None:
    """`make()`, a report (a plot, a section, a diagnosis) made after a run or an experiment finished; if it fails, one
    warning line with the reason instead, so that the end of a finished run never fails it
    (docs/reliability.md#end-of-run-reports)."""
    try:
        return make()
    except Exception as error:  # noqa: BLE001  (any failure of a report: the run's outputs are already written)
        print(f"atesd: warning: {what} could not be made ({type(error).__name__}: {error}); the run's outputs "
              "are complete", file=sys.stderr)
        return None


def made(what: str, make: Callable[[], object]) -> bool:
    """Whether `make()` (a figure, a file) was made; a failure is one warning line (`report_or_warn`)."""
    return report_or_warn(what, lambda: make() or True) is not None

EXPERIMENT_LOCK = "experiment.lock"


def guard_settings(path: Path, settings: dict[str, Any], introduced: dict[str, Any] | None = None) -> None:
    """Record an experiment's settings in `path`, or refuse when the folder was made with different ones.

    `introduced` gives, for settings added to the record after some folders were made, the value such a folder
    was made with (so a folder made before the setting was recorded continues with its default)."""
    settings = json.loads(json.dumps(settings))  # tuples → lists, as they read back
    if path.is_file():
        saved = flat({**(introduced or {}), **read_json(path)})
        now = flat(settings)
        changed = sorted(key for key in saved.keys() | now.keys() if saved.get(key) != now.get(key))
        if changed:
            details = "; ".join(f"{key}: {saved.get(key)!r} there, {now.get(key)!r} now" for key in changed)
            raise ConfigError(f"{path.parent} was made with other settings ({details}): continue it with the same "
                              "arguments, or pass another --out")
        return
    atomic_write_text(path, json.dumps(settings, indent=1))


def flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, so that a difference is named by the one key that differs."""
    items: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


@contextlib.contextmanager
def experiment_lock(out: Path, command: str) -> Iterator[None]:
    """Hold `out` for one experiment command; a second one into the same folder is refused, naming the first."""
    lock = RunLock.acquire(out, EXPERIMENT_LOCK, advice=f"pass another --out to this {command}")
    try:
        yield
    finally:
        lock.release()


MAX_SEEDS = 1000  # more would not finish; planning them alone takes minutes
# The most each count flag accepts: each sizes a list of runs, processes or problems, and more would not finish.
MAX_COUNTS = {"seeds": MAX_SEEDS, "base_models": 1000, "jobs": 256, "mismatch_problems": 100_000}


def check_counts(**counts: int | None) -> None:
    """Every count flag of an experiment at least 1 (None: not given) and at most its `MAX_COUNTS`."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if value is not None and value > MAX_COUNTS[name]:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: at most {MAX_COUNTS[name]}")


def existing_folder(path: Path, flag: str) -> Path:
    """`path`, which a flag names as an existing folder (a typo must not silently redo hours of runs)."""
    if not path.is_dir():
        raise UserError(f"{flag} {path}: no such folder")
    return path


def writable_folder(path: Path, flag: str) -> Path:
    """`path`, created if needed and checked writable now, before any work whose results it must hold."""
    probe = temporary_path(path / ".write-check")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"{flag} {path}: cannot write there ({error.strerror or error}): choose another folder") \
            from None
    return path


def distinct(values: Sequence[float], flag: str) -> None:
    """Refuse a value given twice (``--alphas 1 1`` would count one run twice) or one that is not finite."""
    if any(not math.isfinite(value) for value in values):
        raise ConfigError(f"{flag}: every value must be a finite number, got {' '.join(f'{v:g}' for v in values)}")
    twice = sorted({f"{value:g}" for value in values if values.count(value) > 1})
    if twice:
        raise ConfigError(f"{flag}: {', '.join(twice)} given more than once; give each value once")


def read_json(path: Path) -> Any:
    """The JSON in `path`; a file cut short or damaged is an error naming it and what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({type(error).__name__}: {error}): delete it, and the command "
                        "that made it redoes its part") from None
