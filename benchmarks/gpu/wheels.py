"""Prepare the wheels `run.sh` installs on a GPU machine without network access (``make gpu-wheels``).

The GPU machine keeps its own torch, transformers, accelerate, peft, numpy, scipy, matplotlib, safetensors,
tokenizers, tqdm and PyYAML; what it lacks of atesd's imports is carried: `CARRIED` at the versions of
constraints.txt (the versions atesd is tested with), built for the machine's Python (``--python-version``,
3.12 by default) on manylinux x86-64, and atesd itself as a wheel. ``datasets`` is left out: atesd imports it
only to load a hub dataset, which a machine without network cannot do anyway. The folder must stay under
64 MiB (what travels to such a machine with a working tree); the script refuses to finish above it. A hash of
atesd's sources is recorded beside the wheels: `run.sh` refuses wheels built from other sources (``--check``).

    python benchmarks/gpu/wheels.py                                  # into benchmarks/gpu/wheels, Python 3.12
    python benchmarks/gpu/wheels.py --dest DIR --python-version 3.11
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CARRIED = ("math-verify", "latex2sympy2_extended", "antlr4-python3-runtime", "pydantic", "pydantic_core",
           "annotated-types", "typing-inspection", "typing_extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
LIMIT_MIB = 64


def pinned(names: tuple[str, ...]) -> list[str]:
    """``name==version`` for each of `names`, from constraints.txt (names compared as pip normalises them)."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    versions = {canonicalize_name(line.split("==")[0]): line.strip() for line in lines
                if "==" in line and not line.startswith("#")}
    missing = [name for name in names if canonicalize_name(name) not in versions]
    if missing:
        raise SystemExit(f"wheels.py: error: {missing} have no pin in constraints.txt")
    return [versions[canonicalize_name(name)] for name in names]


SOURCE_STAMP = "atesd-source.sha256"


def source_hash() -> str:
    """A hash of atesd's source files, recorded beside its wheel: a wheel built from other sources is stale."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "atesd").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def check_fresh(wheels: Path) -> None:
    """Exit with a message when the atesd wheel in `wheels` was not built from this working tree's sources."""
    stamp = wheels / SOURCE_STAMP
    if not stamp.is_file() or stamp.read_text().strip() != source_hash():
        raise SystemExit(f"wheels.py: error: the atesd wheel in {wheels} was built from other sources than this "
                         "working tree's: run 'make gpu-wheels' again and carry the folder")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent / "wheels")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (major.minor)")
    parser.add_argument("--check", action="store_true", help="only check that --dest's atesd wheel is this tree's")
    args = parser.parse_args(argv)
    if args.check:
        check_fresh(args.dest)
        return args.dest
    if args.dest.exists():
        shutil.rmtree(args.dest)  # one version of each package: two would stop the install there
    args.dest.mkdir(parents=True)
    platforms = [flag for name in PLATFORMS for flag in ("--platform", name)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp", *platforms,
                    "-d", str(args.dest), *pinned(CARRIED)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(args.dest), str(ROOT)],
                   check=True)
    (args.dest / SOURCE_STAMP).write_text(source_hash() + "\n")
    size = sum(path.stat().st_size for path in args.dest.glob("*.whl")) / 2**20
    print(f"{len(list(args.dest.glob('*.whl')))} wheels, {size:.1f} MiB, in {args.dest}")
    if size > LIMIT_MIB:
        raise SystemExit(f"wheels.py: error: the wheels take {size:.1f} MiB, over the {LIMIT_MIB} MiB that travel")
    return args.dest


if __name__ == "__main__":
    main(sys.argv[1:])
