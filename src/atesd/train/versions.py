"""The versions of Python and of the packages a run ran with, written next to its outputs (``versions.json``,
and the demo's ``summary.md``), so that a figure can be traced to the software that made it."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

from atesd.files import atomic_write_text

PACKAGES = ("atesd", "torch", "transformers", "accelerate", "datasets", "peft", "math-verify", "tokenizers",
            "safetensors", "numpy", "vllm")


def package_versions() -> dict[str, str]:
    """Python's version and each installed package's (packages that are not installed are left out)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_versions(run_dir: Path) -> None:
    atomic_write_text(run_dir / "versions.json", json.dumps(package_versions(), indent=1))


def versions_line() -> str:
    return ", ".join(f"{name} {version}" for name, version in package_versions().items())
