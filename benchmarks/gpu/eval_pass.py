"""The GPU check's evaluation part: `atesd eval`'s code path on a Qwen3-1.7B-shaped model, timed.

A randomly initialised model (`shapes.build_model_dir`, or ``--model-dir``) is evaluated with the paper's
protocol settings of configs/qwen3-1.7b/eval.yaml (temperature 1.0, top-p 0.95, k samples per problem) on a
local benchmark of generated arithmetic problems (a JSONL file with `id, problem, answer`, as a user's own
benchmark would be), through `eval.runner`: prompts, the HF generate engine, grading with math-verify, and the
per-problem results file. A random model never emits EOS, so every completion runs to ``--max-new-tokens``.

Writes (``--out``, JSON) the evaluation's generated tokens/s, its wall time, peak GPU memory and the summary
(Average@k of a random model: 0).

    python benchmarks/gpu/eval_pass.py                  # on a CUDA GPU
    python benchmarks/gpu/eval_pass.py --tiny           # tiny shapes in float32: a CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import add_shape_flags, build_model_dir, device_shapes, write_problems

from atesd.config import load_config
from atesd.eval.evaluate import evaluate, write_results
from atesd.eval.runner import benchmark_problems, evaluation_parts
from atesd.train.base_model import load_model

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "qwen3-1.7b" / "eval.yaml"


class CountingEngine:
    """The evaluation's engine, counting the tokens it generates."""

    def __init__(self, engine) -> None:
        self.engine, self.tokens = engine, 0
        self.schedules_itself = engine.schedules_itself

    def generate_samples(self, prompt_ids, n, sampling, seeds, generator):
        samples = self.engine.generate_samples(prompt_ids, n, sampling, seeds, generator)
        self.tokens += sum(len(ids) for group in samples for ids in group)
        return samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_flags(parser)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=12, help="k samples per problem (the paper's 12)")
    parser.add_argument("--batch-size", type=int, default=96, help="sequences per generate call (eval.yaml's)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("gpu_eval.json"))
    args = parser.parse_args(argv)
    cuda, label, shapes, dtype = device_shapes(parser, args)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = args.model_dir or build_model_dir(scratch / "model", shapes, dtype)
        benchmark = write_problems(scratch / "bench.jsonl", args.problems, with_answers=True)
        config = load_config(RECIPE, [
            f"model.name_or_path={model_dir}", f"model.dtype={dtype}", "model.lora=null",
            f"eval.benchmarks=[{benchmark}]", f"eval.num_samples={args.num_samples}",
            f"eval.batch_size={args.batch_size}", f"eval.max_new_tokens={args.max_new_tokens}",
            f"run.output_dir={scratch / 'runs'}"])
        model, tokenizer = load_model(config)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prompts, engine, sampling = evaluation_parts(config, model, tokenizer)  # moves the model to the GPU
        counting = CountingEngine(engine)
        problems = benchmark_problems(config, str(benchmark))
        started = time.perf_counter()
        results = evaluate(problems, prompts.student, counting,
                           lambda ids: tokenizer.decode(ids, skip_special_tokens=True), sampling,
                           config.eval.num_samples, seed=config.run.seed, batch_size=config.eval.batch_size)
        seconds = time.perf_counter() - started
        summary = write_results(results, config.eval.num_samples, scratch / "results.json")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shapes": label, "dtype": dtype, "engine": "hf",
        "problems": len(problems), "num_samples": args.num_samples, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "generated_tokens": counting.tokens, "seconds": seconds,
        "generated_tokens_per_s": counting.tokens / seconds,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "summary": summary,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "summary"}, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
