"""What every benchmark script here shares: the common command-line flags, the machine description, and
writing one result file.

Every script takes ``--threads`` (torch and OpenMP threads; 1 gives steadier figures on a busy machine),
``--repeats`` (timed rounds), ``--quick`` (small sizes, for a smoke run) and ``--out FILE.json``, so that
`run_all.py` can run them all the same way and the whole set can be re-run on a quiet machine.

Where a benchmark runs the embedded model, ``--quick`` runs it at the test suite's tiny sizes (`quick_overrides`:
tests/conftest.py's ``TINY_MODEL_OVERRIDES`` and ``TINY_RUN_OVERRIDES``), whose warm start takes seconds, so that a
smoke run of every benchmark (`make bench-smoke`, benchmarks/smoke.sh) goes through the real code paths in a few
minutes; its figures are not the embedded default's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from atesd.config import Config, load_config
from atesd.experiments.tables import markdown
from atesd.models.loading import EMBEDDED

# The tiny sizes are set in one place, the test suite's conftest.
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_MODEL_OVERRIDES, TINY_RUN_OVERRIDES

# vLLM's CPU attention needs a head size of at least 32 (tests/test_vllm_real.py), and a small KV cache starts faster.
QUICK_VLLM_OVERRIDES = ("model.embedded.hidden_size=64", "rollout.vllm.kv_cache_gib=0.0625",
                        "eval.vllm.kv_cache_gib=0.0625")


def add_common_flags(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / OpenMP threads (0: torch's default); 1 gives steadier timings on a busy machine")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per measurement")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the benchmark")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


def quick_overrides(quick: bool, vllm: bool = False) -> list[str]:
    """With --quick, the settings that put an embedded config on the test suite's tiny model and run sizes (with
    `vllm`, at a size vLLM's CPU build serves); none without it. A script puts its own settings after these."""
    if not quick:
        return []
    return [*TINY_MODEL_OVERRIDES, *TINY_RUN_OVERRIDES, *(QUICK_VLLM_OVERRIDES if vllm else ())]


def load_bench_config(path: str | Path, overrides: list[str], quick: bool, vllm: bool = False) -> Config:
    """The config at `path` with `overrides`; with --quick and the embedded model, on its tiny sizes
    (`quick_overrides`, before `overrides`). Another model (SmolLM2) stays as configured."""
    config = load_config(path, overrides)
    if quick and config.model.name_or_path == EMBEDDED:
        config = load_config(path, [*quick_overrides(quick, vllm), *overrides])
    return config


def apply_threads(threads: int) -> None:
    """Use `threads` CPU threads in this process and in the processes it starts."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def cpu_model() -> str:
    """The CPU's model name as lscpu / /proc/cpuinfo give it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(function, bucket: list[float]):
    """Wrap `function` (often a bound method) so that each call's wall time is appended to `bucket`."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - started)
    return wrapper


def summary(times: list[float]) -> dict[str, float]:
    """Median, mean and spread of a list of seconds."""
    return {"median_s": statistics.median(times), "mean_s": statistics.mean(times),
            "std_s": statistics.stdev(times) if len(times) > 1 else 0.0, "min_s": min(times)}


def write_results(path: Path | None, name: str, args: argparse.Namespace, results: Any) -> dict[str, Any]:
    """The benchmark's figures with the machine and the flags it ran with; written to `path` when given."""
    flags = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    document = {"benchmark": name, "machine": machine(), "flags": flags, "results": results}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1))
        print(f"wrote {path}")
    return document


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    return markdown(header, [[cell(v) for v in row] for row in rows])
