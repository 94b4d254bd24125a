"""Rollout throughput of the vLLM engine against the HF engine's samplers, on a config's base model and student
prompts: generated tokens per second for one batch of ``--batch`` prompts of ``rollout.max_new_tokens`` at most.

Engines: ``vllm`` (`atesd.rollout.vllm.VLLMEngine`, colocated, its start-up untimed), ``hf-loop`` (atesd's decode
loop) and ``hf-generate`` (transformers' generate), all sampling with the config's rollout settings from seeded
generators. With ``model.lora`` the model is the training model with its adapter (B drawn small, as after some
training), and vLLM runs twice: ``vllm-request`` (the adapter as a LoRA request) and ``vllm-merge`` (merged); each
vLLM call includes its sync and sync guard, as in training. Every timed round runs each engine once, in turn, so a
machine that gets busier or quieter weighs on all of them. Runs in the real-vLLM environment (``make test-vllm``
builds it). ``--quick`` (a smoke run): 4 prompts, one timed round; an embedded config on the tiny model
(harness.quick_overrides)::

    .venv-vllm/bin/python benchmarks/bench_vllm_rollout.py configs/embedded/opsd.yaml rollout.max_new_tokens=64 \\
        --out runs/bench/vllm-rollout-embedded.json
    .venv-vllm/bin/python benchmarks/bench_vllm_rollout.py configs/smollm2-135m/opsd.yaml \\
        --out runs/bench/vllm-rollout-smollm2.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from harness import add_common_flags, apply_threads, load_bench_config, markdown_table, write_results

from atesd.data.prompts import PromptBuilder
from atesd.models.loading import load_training_model
from atesd.rollout import DecodeOptions, HFGenerateEngine, SamplingParams
from atesd.rollout.vllm import VLLMEngine
from atesd.train.base_model import base_model_path
from atesd.train.problems import training_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", default=(), metavar="key=value")
    parser.add_argument("--batch", type=int, default=32, help="prompts per call (default %(default)s)")
    add_common_flags(parser, repeats=3)
    args = parser.parse_args()
    apply_threads(args.threads)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    config = load_bench_config(args.config, list(args.overrides), args.quick, vllm=True)
    batch, repeats = (4, 1) if args.quick else (args.batch, args.repeats)
    model, tokenizer = load_training_model(config, base_model_path(config))
    model.eval()
    with torch.no_grad():  # an adapter that has trained a little: B = 0 would be the base model
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    problems, _ = training_problems(config)
    prompt_ids = [prompts.student(problem) for problem in problems[:batch]]
    rollout = config.rollout
    sampling = SamplingParams(rollout.temperature, rollout.top_p, rollout.top_k, rollout.max_new_tokens)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    started = time.perf_counter()
    modes = ("request", "merge") if config.model.lora else ("merge",)
    engines: dict = {
        ("vllm" if len(modes) == 1 else f"vllm-{mode}"): VLLMEngine(
            model, base_model_path(config), rollout.vllm.model_copy(update={"lora": mode}), eos_token_id=eos,
            dtype=config.model.dtype, seed=config.run.seed) for mode in modes}
    engines |= {
        "hf-loop": HFGenerateEngine(model, pad_token_id=pad, eos_token_id=eos, batch_size=batch, sampler="loop",
                                    decode_options=DecodeOptions()),
        "hf-generate": HFGenerateEngine(model, pad_token_id=pad, eos_token_id=eos, batch_size=batch,
                                        sampler="generate"),
    }
    vllm_start = time.perf_counter() - started
    for engine in engines.values():  # an untimed round: first-call costs
        engine.update_weights()
        engine.generate(prompt_ids, sampling, torch.Generator().manual_seed(0))
    timings: dict[str, list[tuple[float, int]]] = {name: [] for name in engines}
    for round_ in range(repeats):
        for name, engine in engines.items():
            begin = time.perf_counter()
            engine.update_weights()
            out = engine.generate(prompt_ids, sampling, torch.Generator().manual_seed(round_ + 1))
            timings[name].append((time.perf_counter() - begin, out.num_tokens))
    results = {name: {"seconds_median": statistics.median(s for s, _ in rounds),
                      "tokens": [n for _, n in rounds],
                      "tokens_per_second": statistics.median(n / s for s, n in rounds)}
               for name, rounds in timings.items()}
    base = results["hf-loop"]["tokens_per_second"]  # a vLLM round includes its sync and sync guard
    print(markdown_table(["engine", "tokens/s (median)", "× hf-loop", "tokens per round"],
                         [[name, f"{r['tokens_per_second']:.0f}", f"{r['tokens_per_second'] / base:.2f}",
                           "/".join(map(str, r["tokens"]))] for name, r in results.items()]))
    write_results(args.out, "vllm_rollout", args, {
        "config": args.config, "overrides": list(args.overrides), "batch": batch,
        "max_new_tokens": rollout.max_new_tokens, "dtype": config.model.dtype,
        "vllm_start_seconds": vllm_start, "engines": results})


if __name__ == "__main__":
    main()
