"""The configs that ship inside the package (``atesd/configs``), and how a command finds the config it is given.

A config argument (CONFIG, ``--recipes``) is a path first: an existing file (a folder, for ``--recipes``) is used
as it is. Otherwise it names a packaged config by its path inside the package's configs folder, with or without
``.yaml`` (``embedded/opsd``, ``embedded/opsd.yaml``, ``qwen3-8b/atesd``), or a packaged folder of recipes
(``embedded``, ``embedded/strong-teacher``). A leading ``configs/`` is dropped, so that the repository paths the
docs show (``configs/embedded/opsd.yaml``) work from any folder, and where atesd was installed from a wheel. A
config's ``extends:`` finds a packaged config the same way when no file of that name lies beside it
(`atesd.files.read_config_tree`), so a user's own config can build on a recipe from anywhere.

The packaged configs are plain files on disk (the package is never imported from a zip: it ships its configs as
package data), so their ``extends:`` paths, relative to the file (`atesd.files.read_config_tree`), resolve there.
In a checkout, the repository's ``configs`` is a link to this folder.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

from atesd.errors import ConfigError

PACKAGED = Path(__file__).resolve().parent / "configs"
# accelerate's launch configs (``accelerate launch --config_file``) ship beside atesd's, but are not atesd configs.
LAUNCH_FOLDER = "accelerate"
SUFFIX = ".yaml"


def packaged_configs() -> list[str]:
    """The names of the packaged atesd configs (``embedded/opsd``: path in the configs folder, no suffix), a folder's
    configs before its subfolders'."""
    return sorted((_name(path) for path in PACKAGED.rglob(f"*{SUFFIX}")
                   if path.relative_to(PACKAGED).parts[0] != LAUNCH_FOLDER), key=lambda name: name.rpartition("/"))


def packaged_folders() -> list[str]:
    """The packaged folders of atesd configs, each a recipe folder for ``atesd compare --recipes``."""
    return sorted({name.rpartition("/")[0] for name in packaged_configs()} - {""})


def launch_configs() -> list[Path]:
    """accelerate's packaged launch configs (multi-process and multi-GPU training; docs/scaling.md)."""
    return sorted((PACKAGED / LAUNCH_FOLDER).glob(f"*{SUFFIX}"))


def resolve_config(given: str | Path, *, folder: bool = False, argument: str = "CONFIG") -> Path:
    """The config file (with `folder`, the folder of configs) that `given` means: an existing path, else the
    packaged config of that name; else a ConfigError that names `argument` and lists what is packaged."""
    path = Path(given)
    if path.is_dir() if folder else path.is_file():
        return path
    found = packaged(str(given), folder=folder)
    if found is not None:
        return found
    kind = "folder" if folder else "file"
    problem = f"not a {kind}" if path.exists() else f"no such {kind}"
    what = "folder of configs" if folder else "config"
    known = packaged_folders() if folder else packaged_configs()
    raise ConfigError(f"{argument} {str(given)!r}: {problem}, and no packaged {what} of that name "
                      f"(packaged: {listing(known)})")


def packaged(name: str, folder: bool = False) -> Path | None:
    """The packaged config (with `folder`, folder of configs) that `name` names, or None."""
    name = name.replace("\\", "/").removeprefix("./").removeprefix("configs/").rstrip("/")
    if folder:
        return PACKAGED / name if name in packaged_folders() else None
    name = name.removesuffix(SUFFIX)
    return PACKAGED / (name + SUFFIX) if name in packaged_configs() else None


def listing(names: list[str]) -> str:
    """`names` (a folder's together) in one short line: neighbours in one folder together, as
    ``embedded/{atesd,opsd}``."""
    groups = []
    for parent, members in groupby(names, key=lambda name: name.rpartition("/")[0]):
        leaves = [name.rpartition("/")[2] for name in members]
        if not parent:
            groups.extend(leaves)
        else:
            groups.append(f"{parent}/{leaves[0]}" if len(leaves) == 1 else f"{parent}/{{{','.join(leaves)}}}")
    return ", ".join(groups)


def _name(path: Path) -> str:
    return path.relative_to(PACKAGED).with_suffix("").as_posix()
