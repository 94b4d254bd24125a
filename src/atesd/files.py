"""Writing the files a run keeps so that a crash or a kill never leaves half of one; reading YAML (and config
files with their `extends`) strictly; checking a name that becomes a directory.

A file is written to a temporary name beside its target, flushed to disk (fsync), and renamed over the target,
so a reader sees the old content or the new one, never a torn mix; a directory (a checkpoint, a final model) is
written in full under a temporary name, every file in it fsynced, and then renamed into place. The temporary
names start with ``.`` and hold ``.tmp-<pid>``: `remove_strays` deletes those a killed process left behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from atesd.errors import ConfigError
from atesd.packaged import packaged


def temporary_path(target: Path, kind: str = "tmp") -> Path:
    """The temporary name of this process for `target`: ``.<name>.<kind>-<pid>`` in the same directory."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_durably(path: Path, text: str) -> None:
    """Write `text` to `path` and flush it to disk (not atomic by itself: see `atomic_write_text`)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a torn file."""
    temporary = temporary_path(path)
    write_durably(temporary, text)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_tree(directory: Path) -> None:
    """Flush every file under `directory`, and the directories themselves, to disk."""
    for root, _, names in os.walk(directory):
        for name in names:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(Path(root))


def publish_directory(temporary: Path, target: Path) -> None:
    """Rename the complete directory `temporary` to `target`, replacing a `target` that exists.

    An existing `target` is first moved aside (``.<name>.old-<pid>``) and deleted after the new one is in place:
    a kill in between leaves both complete copies, under their temporary names, and no `target`.
    """
    fsync_tree(temporary)
    if target.exists():
        stale = temporary_path(target, "old")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        os.replace(temporary, target)
        shutil.rmtree(stale)
    else:
        os.replace(temporary, target)
    fsync_directory(target.parent)


def remove_strays(directory: Path, name: str = "*") -> None:
    """Delete the temporary files and directories of `name` (a glob) that interrupted writes left in
    `directory`; only call it while no other process writes there (the run directory's lock)."""
    for stray in directory.glob(f".{name}.*-*"):
        if stray.name.rsplit("-", 1)[-1].isdigit() and any(f".{kind}-" in stray.name for kind in ("tmp", "old")):
            if stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)


def directory_name(name: str | None) -> str | None:
    """`name` when it is one directory name (no separator, not ``.`` or ``..``), so that a path built from it
    stays inside its parent; else ValueError. None passes (a default applies)."""
    if name is not None and (name.strip() in ("", ".", "..") or any(c in name for c in "/\\\0")):
        raise ValueError(f"must be one directory name (no '/', '\\' or '..'), got {name!r}")
    return name


class _StrictLoader(yaml.SafeLoader):
    """YAML as settings need it: a key given twice is an error (PyYAML keeps the last one silently), and ``1e3``
    is a number, as in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string, which an integer setting refuses)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then own keys: overriding is the point
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {first_line[key]}): keep one",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


def read_yaml(text: str, source: str) -> Any:
    """`text` parsed as YAML with `_StrictLoader` (safe: plain data only); a ConfigError names `source` (a file,
    an override) and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        line = f" line {error.problem_mark.line + 1}:" if error.problem_mark else ""
        raise ConfigError(f"{source}: not valid YAML:{line} {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None


def read_config_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a config file, with ``extends: other.yaml`` (relative to the file, else a packaged
    config's name: ``extends: qwen3-1.7b/adaptive``) merged under it (`_deep_merge`)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (extended by {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' makes a cycle through {', '.join(map(str, _seen))}")
    tree = read_yaml(path.read_text(encoding="utf-8"), str(path))
    if tree is None:
        logging.getLogger(__name__).warning("%s holds no settings: every setting takes its default", path)
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be the path of another config file, or a packaged config's name")
    base = path.parent / parent
    if not base.is_file():  # a packaged config by name (`atesd config list`), as on the command line
        base = packaged(parent) or base
    return _deep_merge(read_config_tree(base, (*_seen, path.resolve())), tree)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` merged into `base`, section by section; a section that names another ``policy`` than the one it
    extends replaces it (the other policy's settings would not apply)."""
    merged = dict(base)
    for key, value in update.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and value.get("policy", below.get("policy")) == \
                below.get("policy"):
            merged[key] = _deep_merge(below, value)
        else:
            merged[key] = value
    return merged
