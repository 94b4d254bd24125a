"""Prompt building per training step: tokenizing every prompt afresh against `PromptBuilder`'s caches.

A step of the embedded default needs 32 student prompts, 32 teacher prompts at the step's α and 32 reference
solutions (g_t). ``fresh`` builds them with a new `PromptBuilder` each step (no cache: what the trainer would
pay if it tokenized every prompt every step); ``cached`` reuses one builder over steps whose α changes as the
controller's does (a new α every 4 steps), on batches drawn from a pool of problems, so repeats are served
from the cache as they are in training once a problem has been seen. ``--quick``: the tiny embedded model's
problems and 4-prompt batches (harness.quick_overrides), ten steps.

    python benchmarks/bench_prompts.py --out runs/bench/prompts.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from harness import add_common_flags, apply_threads, markdown_table, quick_overrides, summary, write_results
from transformers import AutoTokenizer

from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.data.prompts import PromptBuilder
from atesd.experiments.warm_start import embedded_base_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "atesd.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=50)
    parser.add_argument("--pool", type=int, default=256, help="problems the batches are drawn from")
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 10)
    apply_threads(args.threads)
    config = load_config(CONFIG, quick_overrides(args.quick))
    tokenizer = AutoTokenizer.from_pretrained(embedded_base_model(config))
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"][: args.pool]
    rng = random.Random(0)
    steps = [(rng.sample(problems, config.train.batch_size), round(rng.uniform(0.05, 1.0), 4))
             for _ in range(args.repeats)]
    steps = [(batch, steps[i - i % 4][1]) for i, (batch, _) in enumerate(steps)]  # α held for 4 steps

    def new_builder() -> PromptBuilder:
        return PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                             config.model.teacher_chat_kwargs)

    def build(builder: PromptBuilder, batch, alpha: float) -> None:
        for problem in batch:
            builder.student(problem)
            builder.teacher(problem, alpha)
            builder.solution(problem)

    results = []
    cached = new_builder()
    build(cached, problems, 1.0)  # the pool seen once, as after the first steps of training
    for mode in ("fresh", "cached"):
        times = []
        for batch, alpha in steps:
            builder = new_builder() if mode == "fresh" else cached
            started = time.perf_counter()
            build(builder, batch, alpha)
            times.append(time.perf_counter() - started)
        results.append({"mode": mode, "prompts_per_step": 3 * len(steps[0][0]), **summary(times)})
    print(markdown_table(["mode", "prompts per step", "ms per step (median)"],
                         [[r["mode"], r["prompts_per_step"], r["median_s"] * 1000] for r in results]))
    write_results(args.out, "prompts", args, results)


if __name__ == "__main__":
    main()
