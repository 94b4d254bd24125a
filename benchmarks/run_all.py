"""Every atesd benchmark in one command: one table printed, one JSON written.

Parts (each its own script here, run in its own process with the same --threads / --quick / --repeats):

- ``divergence``: the distillation loss, chunked against a direct [N, V] implementation, at V = 151,936: peak
  extra memory and forward + backward time over N, the float32 agreement check, the ≤ ¼ memory verdict;
  ``divergence_hidden`` the same from hidden states + LM head (what the trainer calls; float32 on CPU, whose
  bf16 matmuls are slow, bf16 on a GPU);
- ``step``: a training step on the embedded default for OPSD, ATESD, GRPO and OPSD with bf16 autocast;
- ``rollout``: HF-engine sampling throughput over batch sizes, each sampler against one forward;
- ``grading``: answers/s on the benchmark answer files, in-process against worker pools;
- ``prompts``: prompt tokenization per step, fresh against PromptBuilder's caches;
- ``scoring``: the teacher's two scoring passes of a distillation step, separate against one batched forward;
- ``trl``: an OPSD step of atesd against TRL's SDFTTrainer on the same work (needs ``pip install -e .[bench]``).

    python benchmarks/run_all.py --out runs/bench/all.json            # the full set
    python benchmarks/run_all.py --quick --out runs/bench/quick.json  # a smoke run
    python benchmarks/run_all.py --parts step trl --threads 2 --out runs/bench/some.json

A part that fails is a row of the table, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from harness import machine, markdown_table

HERE = Path(__file__).resolve().parent
PARTS: dict[str, list[str]] = {
    "divergence": ["bench_divergence.py"],
    "divergence_hidden": ["bench_divergence.py", "--variants", "direct_hidden", "chunked_hidden",
                          "--check-positions", "0", "--dtype", "bfloat16" if torch.cuda.is_available() else "float32"],
    "step": ["bench_step.py"],
    "rollout": ["bench_rollout.py"],
    "grading": ["bench_grading.py"],
    "prompts": ["bench_prompts.py"],
    "scoring": ["bench_scoring.py"],
    "trl": ["bench_trl.py"],
}


def _divergence_rows(part: str, document: dict[str, Any]) -> list[list[Any]]:
    """The summary rows of a divergence part: each variant's peak extra memory and time, the memory verdicts and
    the float32 agreement."""
    rows: list[list[Any]] = []
    for r in document.get("results"):
        if "error" in r:
            rows.append([part, f"{r['variant']} N={r['N']}", r["error"][:60], ""])
        else:
            rows.append([part, f"{r['variant']} N={r['N']} peak extra / fwd+bwd",
                         f"{r['peak_extra_mib']:.0f} MiB / {r['time_s_median']:.2f} s", ""])
    for key, memory in document.get("verdict", {}).items():
        if key.startswith("memory"):
            rows.append([part, f"chunked / direct peak extra at N={memory['N']}", memory["ratio"],
                         "≤ 0.25 met" if memory["ok"] else "≤ 0.25 NOT met"])
    agree = document.get("agreement", {})
    if "loss_rel_diff" in agree:
        rows.append([part, f"float32 agreement N={agree['N']}: loss rel / grad max abs",
                     f"{agree['loss_rel_diff']:.1e} / {agree['grad_max_abs_diff']:.1e}", "target 1e-5"])
    return rows


def _step_rows(part: str, results: Any) -> list[list[Any]]:
    """The summary rows of the step part: per variant its step time, time shares, throughputs and (bf16) its step-0
    loss against float32."""
    rows: list[list[Any]] = []
    for r in results:
        if "error" in r:
            rows.append([part, r["variant"], r["error"], ""])
            continue
        shares = "/".join("–" if r[k] is None else f"{r[k]:.2f}"
                          for k in ("rollout_share", "teacher_share", "update_share", "probe_share"))
        rows.append([part, f"{r['variant']} step (× opsd)", f"{r['step_s'] * 1000:.0f} ms ({r['vs_opsd']:.2f}×)",
                     "ms"])
        rows.append([part, f"{r['variant']} shares rollout/teacher/update/probe", shares, ""])
        rows.append([part, f"{r['variant']} rollout / update tokens/s",
                     f"{r['rollout_tok_s'] or 0:.0f} / {r['update_tok_s'] or 0:.0f}", "tokens/s"])
        if "first_loss_rel_diff" in r:
            rows.append([part, f"{r['variant']} step-0 loss rel diff vs float32", r["first_loss_rel_diff"], ""])
    return rows


def _trl_rows(part: str, results: Any) -> list[list[Any]]:
    """The summary rows of the trl part: atesd's step against TRL's SDFT step, and SDFT with TRL's default
    gradient checkpointing where it was timed."""
    rows: list[list[Any]] = []
    rows.append([part, f"atesd OPSD step / same work / TRL {results['trl_version']} SDFT step",
                 (f"{results['atesd_step_s']:.2f} / {results['atesd_same_work_s']:.2f} / "
                 f"{results['trl_step_s']:.2f}"), "s"])
    rows.append([part, "atesd / TRL (same work)", f"{results['ratio_step']:.2f} ({results['ratio_same_work']:.2f})",
                 "<1: atesd faster"])
    if results.get("trl_default_checkpointing_step_s"):
        rows.append([part, "TRL SDFT with its default gradient checkpointing",
                     results["trl_default_checkpointing_step_s"], "s"])
    return rows


def headline(part: str, document: dict[str, Any]) -> list[list[Any]]:
    """The rows of the summary table for one part: (part, what, value, unit)."""
    results = document.get("results")
    rows: list[list[Any]] = []
    if part.startswith("divergence"):
        rows += _divergence_rows(part, document)
    elif part == "step":
        rows += _step_rows(part, results)
    elif part == "rollout":
        rows += [[part, f"batch {r['batch_size']}, {r['variant']}", (f"{r['tokens_per_s']:.0f} "
                  f"({r['x_forward_cpu']:.2f}× forward)"), "tokens/s"] for r in results]
    elif part == "grading":
        rows += [[part, f"{r['batch']} ({r['answers']}), workers {r['workers']} {r['mode']}", r["answers_per_s"],
                  "answers/s"] for r in results]
    elif part == "prompts":
        rows += [[part, f"{r['mode']} ({r['prompts_per_step']} prompts)", r["median_s"] * 1000, "ms/step"]
                 for r in results]
    elif part == "scoring":
        rows += [[part, f"teacher scoring, {r['mode']}", r["median_s"] * 1000, "ms"] for r in results["modes"]]
        rows.append([part, "teacher prompt tokens / all teacher tokens", results["teacher_prompt_token_share"], ""])
    elif part == "trl":
        rows += _trl_rows(part, results)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads in every part")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: each part's own)")
    parser.add_argument("--quick", action="store_true", help="every part at its small size (a smoke run)")
    parser.add_argument("--out", type=Path, required=True, help="the combined JSON")
    args = parser.parse_args()

    documents: dict[str, Any] = {}
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for part in args.parts:
            script, *extra = PARTS[part]
            if part == "trl" and importlib.util.find_spec("trl") is None:
                documents[part] = {"skipped": "trl is not installed: pip install -e '.[bench]'"}
                rows.append([part, "skipped", documents[part]["skipped"], ""])
                continue
            out = Path(scratch) / f"{part}.json"
            command = [sys.executable, str(HERE / script), *extra, "--threads", str(args.threads), "--out", str(out)]
            command += ["--quick"] * args.quick + (["--repeats", str(args.repeats)] if args.repeats else [])
            print(f"== {part}: {' '.join(command[1:])}", flush=True)
            started = time.perf_counter()
            proc = subprocess.run(command, check=False)
            seconds = time.perf_counter() - started
            if proc.returncode != 0 or not out.is_file():
                documents[part] = {"error": f"exit status {proc.returncode}", "seconds": seconds}
                rows.append([part, "failed", f"exit status {proc.returncode} (its output is above)", ""])
                continue
            documents[part] = json.loads(out.read_text()) | {"seconds": seconds}
            rows += headline(part, documents[part])
    table = markdown_table(["part", "measurement", "value", "unit / note"], rows)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "flags": {k: str(v) for k, v in vars(args).items()},
                                    "table": table, "parts": documents}, indent=1))
    print(f"wrote {args.out}")
    failed = [part for part, document in documents.items() if "error" in document]
    if failed:
        sys.exit(f"run_all: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
