"""Whether vLLM and HF evaluate one model alike: Average@k of the same model on the same problems with
``eval.engine=hf`` and ``eval.engine=vllm``, and a paired test over problems (each problem's accuracy under vLLM
minus under HF: mean, 95 % interval, t and p of the paired t-test). The two engines draw different random streams,
so they agree when the difference is within sampling noise, not to the token.

Runs in the real-vLLM environment (``make test-vllm`` builds it). ``--quick`` (a smoke run): 8 problems; an
embedded config on the tiny model (harness.quick_overrides)::

    .venv-vllm/bin/python benchmarks/vllm_eval_agreement.py configs/embedded/opsd.yaml --out runs/bench/agreement.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from harness import add_common_flags, apply_threads, load_bench_config, markdown_table, write_results
from scipy import stats

from atesd.eval.runner import evaluate_model
from atesd.train.base_model import evaluation_engine


def per_problem_accuracy(path: Path) -> dict[str, float]:
    results = json.loads(path.read_text())["problems"]
    return {row["problem_id"]: float(np.mean([grade["correct"] for grade in row["grades"]])) for row in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", default=(), metavar="key=value")
    parser.add_argument("--model", help="a model directory (default: the config's base model)")
    add_common_flags(parser, repeats=1)
    args = parser.parse_args()
    apply_threads(args.threads)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    quick = ["eval.max_problems=8"] if args.quick else []
    accuracy, averages = {}, {}
    with tempfile.TemporaryDirectory(prefix="atesd-agreement-") as out:
        for engine_name in ("hf", "vllm"):
            config = load_bench_config(args.config, [*args.overrides, *quick, f"eval.engine={engine_name}",
                                                     "eval.teacher_alpha=null"], args.quick, vllm=True)
            engine, tokenizer = evaluation_engine(config, args.model)
            folder = Path(out) / engine_name
            summaries = evaluate_model(config, None, tokenizer, folder, "student", engine=engine,
                                       model_name=args.model or config.model.name_or_path)
            benchmark = config.eval.benchmarks[0]
            k = config.eval.num_samples
            averages[engine_name] = summaries[benchmark]["all"][f"average@{k}"]
            (path,) = folder.glob("student-*.json")
            accuracy[engine_name] = per_problem_accuracy(path)
    problems = sorted(accuracy["hf"])
    difference = np.array([accuracy["vllm"][p] - accuracy["hf"][p] for p in problems])
    mean, sem = difference.mean(), difference.std(ddof=1) / np.sqrt(len(difference))
    half = stats.t.ppf(0.975, len(difference) - 1) * sem
    test = stats.ttest_rel([accuracy["vllm"][p] for p in problems], [accuracy["hf"][p] for p in problems])
    result = {"config": args.config, "overrides": list(args.overrides), "model": args.model, "problems": len(problems),
              "k": k, "average_hf": averages["hf"], "average_vllm": averages["vllm"],
              "difference": float(mean), "interval95": [float(mean - half), float(mean + half)],
              "t": float(test.statistic), "p": float(test.pvalue)}
    print(markdown_table(["problems", f"Average@{k} HF", f"Average@{k} vLLM", "vLLM − HF [95 % CI]", "t", "p"],
                         [[len(problems), f"{100 * averages['hf']:.1f}", f"{100 * averages['vllm']:.1f}",
                           f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]",
                           f"{result['t']:.2f}", f"{result['p']:.2f}"]]))
    write_results(args.out, "vllm_eval_agreement", args, result)


if __name__ == "__main__":
    main()
