"""The GPU check in one command: every part run in a process of its own, one JSON report of them all.

`run.sh` installs what the machine lacks and calls this. The parts, cheapest and most telling first:

1. ``agreement`` (`agreement.py`): the distillation loss and gradients on CUDA against the CPU, embedded model;
2. ``eval`` (`eval_pass.py`): the evaluation code path at Qwen3-1.7B shapes, generated tokens/s;
3. ``fsdp`` (`train_step.py --fsdp` under ``accelerate launch``): full-fine-tuning steps sharded by FSDP2;
4. ``sampling`` (`sampling.py --lora`): generate, atesd's decode loop and its compiled step side by side, ms per
   decode step and whether they sample the same tokens;
5. ``lora`` (`train_step.py`): training steps at Qwen3-1.7B shapes, LoRA, bf16, gradient checkpointing, 1,024
   sampled tokens per rollout (the recipe's worst case; the longest part: about 3 minutes on an H200).

Each part gets what is left of ``--budget-s`` (default 450 s, so that the whole check ends within 8 minutes)
up to its own limit; a part that fails or runs out of time is recorded as such and the next one still runs.
The report (``OUT/gpu_check.json``) is rewritten after every part, so a check cut short keeps what it
measured; each part's output is in ``OUT/<part>.log``. The Qwen3-1.7B-shaped model is built once and shared.

    bash benchmarks/gpu/run.sh OUT_DIR            # a CUDA machine
    bash benchmarks/gpu/run.sh OUT_DIR --tiny     # tiny shapes on a CPU: the smoke test CI runs
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import build_model_dir, shapes_for

from atesd.files import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGES = ("atesd", "torch", "transformers", "accelerate", "peft", "math_verify", "pydantic", "safetensors")


PARTS = ("agreement", "eval", "fsdp", "sampling", "lora")  # the order they run in (`part_commands`)


def part_commands(tiny: bool, model_dir: Path, scratch: Path) -> dict[str, tuple[list[str], int, dict]]:
    """Each part's command, its time limit in seconds and the environment it adds."""
    python = sys.executable
    model = ["--model-dir", str(model_dir)]
    sizes = {"eval": ["--problems", "4", "--num-samples", "2", "--max-new-tokens", "16"],
             "lora": ["--steps", "2", "--batch-size", "2", "--micro-batch-size", "1", "--max-new-tokens", "12"],
             "fsdp": ["--steps", "2", "--batch-size", "2", "--micro-batch-size", "1", "--max-new-tokens", "12"]} \
        if tiny else {"eval": ["--max-new-tokens", "256"], "lora": ["--steps", "2"],
                      "fsdp": ["--steps", "2", "--max-new-tokens", "256"]}
    # On a CPU the compiled step takes a minute to compile: the smoke test leaves it out.
    sampling = ["--batch-sizes", "2", "--max-new-tokens", "8", "--variants", "generate", "loop"] if tiny \
        else ["--batch-sizes", "8", "--max-new-tokens", "64"]
    tiny_flag = ["--tiny"] if tiny else []
    cpu = {"ACCELERATE_USE_CPU": "true"} if tiny else {}
    launch = [python, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1"]
    return {
        "agreement": ([python, str(HERE / "agreement.py"), *tiny_flag, "--out", str(scratch / "agreement.json")],
                      120, {}),
        "eval": ([python, str(HERE / "eval_pass.py"), *tiny_flag, *model, *sizes["eval"],
                  "--out", str(scratch / "eval.json")], 150, {}),
        "fsdp": ([*launch, str(HERE / "train_step.py"), "--fsdp", *tiny_flag, *model, *sizes["fsdp"],
                  "--out", str(scratch / "fsdp.json")], 150, cpu),
        "sampling": ([python, str(HERE / "sampling.py"), "--lora", *tiny_flag, *model, *sampling,
                      "--out", str(scratch / "sampling.json")], 120, {}),
        "lora": ([python, str(HERE / "train_step.py"), *tiny_flag, *model, *sizes["lora"],
                  "--out", str(scratch / "lora.json")], 300, {}),
    }


def environment() -> dict:
    """The machine, and each package's version and the folder it was imported from (the carried ones should
    come from run.sh's install target)."""
    packages = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            packages[name] = {"version": getattr(module, "__version__", "?"), "from": str(Path(module.__file__).parent)}
        except ImportError as error:
            packages[name] = {"missing": str(error)}
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "cuda": torch.version.cuda, "packages": packages}


def run_part(name: str, command: list[str], limit: float, extra_env: dict, log: Path, result: Path) -> dict:
    """Run one part with its output to `log`; its JSON result, or how it failed."""
    started = time.perf_counter()
    with log.open("w") as output:
        try:
            process = subprocess.run(command, check=False, stdout=output, stderr=subprocess.STDOUT,
                                     timeout=limit, env={**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}, cwd=ROOT)
            status = "ok" if process.returncode == 0 and result.is_file() else f"failed (exit {process.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    entry = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
    if result.is_file():
        entry["result"] = json.loads(result.read_text())
    else:
        entry["log_tail"] = log.read_text(errors="replace")[-3000:]
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and the parts' logs")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on a CPU (the smoke test)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole check's time, model build included")
    parser.add_argument("--parts", nargs="+", default=None, choices=PARTS, metavar="PART",
                        help=f"only these parts ({' '.join(PARTS)}); a misspelled one is an error, not a check of "
                        "nothing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        parser.error("no CUDA GPU: run with --tiny for the CPU smoke test")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "gpu_check.json"
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tiny": args.tiny, "environment": environment(), "parts": {}}
    atomic_write_text(report_path, json.dumps(report, indent=1))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        _, shapes, dtype = shapes_for(args.tiny)
        building = time.perf_counter()
        model_dir = build_model_dir(scratch / "model", shapes, dtype)
        report["model_build_s"] = round(time.perf_counter() - building, 1)
        for name, (command, limit, extra_env) in part_commands(args.tiny, model_dir, scratch).items():
            if args.parts and name not in args.parts:
                continue
            left = args.budget_s - (time.perf_counter() - started)
            if left < 10:
                report["parts"][name] = {"status": "not run: the budget was spent"}
            else:
                report["parts"][name] = run_part(name, command, min(limit, left), extra_env,
                                                 args.out / f"{name}.log", scratch / f"{name}.json")
            print(f"{name}: {report['parts'][name]['status']}", flush=True)
            atomic_write_text(report_path, json.dumps(report, indent=1))
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    report["all_ok"] = all(part["status"] == "ok" for part in report["parts"].values()) and \
        report["parts"].get("agreement", {}).get("result", {}).get("agree", False)
    atomic_write_text(report_path, json.dumps(report, indent=1))
    print(f"report: {report_path} (all parts ok: {report['all_ok']})")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
