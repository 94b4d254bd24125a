"""What every benchmark script here shares: the common command-line flags, the machine description, and
writing one result file.

Every script takes ``--threads`` (torch and OpenMP threads; 1 gives steadier figures on a busy machine),
``--repeats`` (timed rounds), ``--quick`` (small sizes, for a smoke run) and ``--out FILE.json``, so that
`run_all.py` can run them all the same way and the whole set can be re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from atesd.experiments.tables import markdown


def add_common_flags(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / OpenMP threads (0: torch's default); 1 gives steadier timings on a busy machine")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per measurement")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the benchmark")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


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
