"""Rollout throughput of the HF engine (`atesd.rollout.hf.HFGenerateEngine`) at several batch sizes, each sampler
against one forward over the same tokens, on the embedded default's warm-started base model with its student
prompts and sampling settings.

Variants (``--variants``): ``generate`` (transformers' generate: the sampler before issue 27), ``loop`` (atesd's
decode loop at its defaults: static cache, finished rows dropped), ``loop-dynamic`` (a dynamic cache),
``loop-keep`` (finished rows kept in the batch), ``loop-compiled`` (the decode step compiled: static cache, rows
kept; its first round, which compiles, is untimed like every variant's). Every timed round runs every variant
once, in turn, from the same seed: the samplers sample the same tokens (the table says whether they did), so
each does the same work, and a machine that gets busier or quieter weighs on all of them.

``forward`` is one forward of the model over the sampled sequences (``[prompt ; completion]``, left-padded, in
batches of the same size, one position of logits): the model's own cost for those tokens. Generated tokens per
second are completion tokens / time. Time is given as wall time and as this process's CPU time; on a shared
machine CPU time is the steadier of the two (it does not count the time other processes hold the cores).
``--quick``: the tiny embedded model (harness.quick_overrides), batch sizes up to 32, at least 8 prompts and one
timed round each.

    python benchmarks/bench_rollout.py --out runs/bench/rollout.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from harness import add_common_flags, apply_threads, markdown_table, quick_overrides, write_results
from transformers import AutoModelForCausalLM, AutoTokenizer

from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.data.prompts import PromptBuilder
from atesd.experiments.warm_start import embedded_base_model
from atesd.models.sequences import left_padded
from atesd.rollout import DecodeOptions, HFGenerateEngine, SamplingParams

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "opsd.yaml"
VARIANTS = {
    "generate": ("generate", DecodeOptions()),
    "loop": ("loop", DecodeOptions()),
    "loop-dynamic": ("loop", DecodeOptions(cache="dynamic")),
    "loop-keep": ("loop", DecodeOptions(drop_finished=False)),
    "loop-compiled": ("loop", DecodeOptions(compile=True)),
}


def clocked(function, *args) -> tuple[object, float, float]:
    """`function(*args)`'s result, wall seconds and CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def one_forward(model: torch.nn.Module, sequences: list[list[int]], pad_token_id: int, batch_size: int) -> None:
    for start in range(0, len(sequences), batch_size):
        ids, mask = left_padded(sequences[start : start + batch_size], pad_token_id)
        model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--min-prompts", type=int, default=32, help="prompts per timed round, at least")
    parser.add_argument("--variants", nargs="+", default=["generate", "loop", "loop-dynamic", "loop-keep"],
                        choices=list(VARIANTS))
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes = [b for b in args.batch_sizes if b <= 32]
        args.min_prompts, args.repeats = 8, min(args.repeats, 1)
    apply_threads(args.threads)

    config = load_config(CONFIG, quick_overrides(args.quick))
    model_dir = embedded_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"]
    rollout = config.rollout
    sampling = SamplingParams(rollout.temperature, rollout.top_p, rollout.top_k, rollout.max_new_tokens)
    pad = tokenizer.pad_token_id

    results = []
    for batch_size in args.batch_sizes:
        engines = {name: HFGenerateEngine(model, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                          batch_size=batch_size, sampler=VARIANTS[name][0],
                                          decode_options=VARIANTS[name][1]) for name in args.variants}
        count = max(batch_size, args.min_prompts)
        batch = [prompts.student(p) for p in problems[:count]]
        wall = {name: [] for name in [*engines, "forward"]}
        cpu = {name: [] for name in wall}
        tokens, identical = [], {name: True for name in engines}
        for round_index in range(args.repeats + 1):  # round 0 untimed: first-call set-up (and compiling)
            outputs = {}
            for name, engine in engines.items():
                generator = torch.Generator().manual_seed(round_index)
                outputs[name], seconds, cpu_seconds = clocked(engine.generate, batch, sampling, generator)
                if round_index:
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
            reference = outputs[args.variants[0]]
            for name, out in outputs.items():
                identical[name] &= out.completion_ids == reference.completion_ids
            sequences = [p + c for p, c in zip(reference.prompt_ids, reference.completion_ids)]
            _, seconds, cpu_seconds = clocked(one_forward, model, sequences, pad, batch_size)
            if round_index:
                wall["forward"].append(seconds)
                cpu["forward"].append(cpu_seconds)
                tokens.append(reference.num_tokens)
        for name, seconds in wall.items():
            row = {"batch_size": batch_size, "variant": name, "prompts": count,
                   "tokens_per_round": statistics.mean(tokens),
                   "median_s": statistics.median(seconds), "median_cpu_s": statistics.median(cpu[name]),
                   "tokens_per_s": sum(tokens) / sum(seconds), "tokens_per_cpu_s": sum(tokens) / sum(cpu[name]),
                   "x_forward_cpu": sum(cpu[name]) / sum(cpu["forward"]),
                   "x_forward_wall": sum(seconds) / sum(wall["forward"]),
                   "same_tokens_as_first_variant": identical.get(name)}
            results.append(row)
            print(f"batch {batch_size:>4} {name:>13}: {row['tokens_per_cpu_s']:8.0f} tokens/CPU s, "
                  f"{row['x_forward_cpu']:.2f}× forward", flush=True)
    print(markdown_table(
        ["batch size", "variant", "tokens/round", "s/round (median)", "CPU s/round (median)", "tokens/s",
         "tokens/CPU s", "× forward (CPU)", "× forward (wall)", "same tokens"],
        [[r["batch_size"], r["variant"], r["tokens_per_round"], r["median_s"], r["median_cpu_s"], r["tokens_per_s"],
          r["tokens_per_cpu_s"], r["x_forward_cpu"], r["x_forward_wall"], r["same_tokens_as_first_variant"]]
         for r in results]))
    write_results(args.out, "rollout", args, results)


if __name__ == "__main__":
    main()
