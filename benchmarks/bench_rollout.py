"""Rollout throughput of the HF engine (`atesd.rollout.hf.HFGenerateEngine`) at several batch sizes, on the
embedded default's warm-started base model with its student prompts and sampling settings.

Generated tokens per second = completion tokens returned / wall time of `engine.generate`; each batch size
samples ``max(batch size, --min-prompts)`` prompts per timed round (after one untimed round).

    python benchmarks/bench_rollout.py --out runs/bench/rollout.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from harness import add_common_flags, apply_threads, markdown_table, summary, write_results
from transformers import AutoModelForCausalLM, AutoTokenizer

from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.data.prompts import PromptBuilder
from atesd.rollout import HFGenerateEngine, SamplingParams
from atesd.train.warm_start import embedded_base_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "opsd.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--min-prompts", type=int, default=32, help="prompts per timed round, at least")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes = [b for b in args.batch_sizes if b <= 32]
        args.min_prompts, args.repeats = 8, min(args.repeats, 1)
    apply_threads(args.threads)

    config = load_config(CONFIG)
    model_dir = embedded_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"]
    rollout = config.rollout
    sampling = SamplingParams(rollout.temperature, rollout.top_p, rollout.top_k, rollout.max_new_tokens)

    results = []
    for batch_size in args.batch_sizes:
        engine = HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  batch_size=batch_size)
        count = max(batch_size, args.min_prompts)
        batch = [prompts.student(p) for p in problems[:count]]
        generator = torch.Generator().manual_seed(0)
        engine.generate(batch, sampling, generator)  # untimed: first-call set-up
        times, tokens = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            out = engine.generate(batch, sampling, generator)
            times.append(time.perf_counter() - started)
            tokens.append(out.num_tokens)
        row = {"batch_size": batch_size, "prompts": count, "tokens_per_round": sum(tokens) / len(tokens),
               **summary(times), "tokens_per_s": sum(tokens) / sum(times)}
        results.append(row)
        print(f"batch {batch_size:>4}: {row['tokens_per_s']:8.0f} tokens/s", flush=True)
    print(markdown_table(["batch size", "prompts", "tokens/round", "s/round (median)", "tokens/s"],
                         [[r["batch_size"], r["prompts"], r["tokens_per_round"], r["median_s"], r["tokens_per_s"]]
                          for r in results]))
    write_results(args.out, "rollout", args, results)


if __name__ == "__main__":
    main()
