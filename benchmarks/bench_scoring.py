"""The teacher's two scoring passes of a distillation step: separate, batched in one forward, or sharing the prompt.

In a step of OPSD / ATESD the teacher scores, after the same teacher prompts, (a) the student's rollouts (the
distillation targets) and (b) the reference solutions (g_t). The trainer runs them as two forwards; both go
through the same weights and the same kind of packed batch, so they can be one forward of 2B sequences. This
measures both ways on the embedded default's base model: the teacher prompts at α = 1 of 32 training problems,
rollouts sampled once from the student prompts, the solutions; forward without gradient, hidden states at the
completion positions (what the trainer takes). The third way, ``shared_prompt`` (what the trainer does), runs the
teacher prompts once and both continuations from their key/value cache (`shared_prompt_hidden_states`). It also
reports how many of the teacher's tokens are prompt tokens, which the shared pass computes once instead of twice.
``--quick``: the tiny embedded model and its 4-problem batch (harness.quick_overrides), three timed rounds.

    python benchmarks/bench_scoring.py --out runs/bench/scoring.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from harness import add_common_flags, apply_threads, markdown_table, quick_overrides, summary, write_results
from transformers import AutoModelForCausalLM, AutoTokenizer

from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.data.prompts import PromptBuilder
from atesd.experiments.warm_start import embedded_base_model
from atesd.models.sequences import completion_hidden_states, pack_sequences, shared_prompt_hidden_states
from atesd.rollout import HFGenerateEngine, SamplingParams

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "opsd.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=10)
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 3)
    apply_threads(args.threads)
    config = load_config(CONFIG, quick_overrides(args.quick))
    model_dir = embedded_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"][: config.train.batch_size]
    rollout = config.rollout
    engine = HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              batch_size=len(problems))
    rollouts = engine.generate([prompts.student(p) for p in problems],
                               SamplingParams(rollout.temperature, rollout.top_p, rollout.top_k,
                                              rollout.max_new_tokens), torch.Generator().manual_seed(0))
    teacher = [prompts.teacher(p, 1.0) for p in problems]
    solutions = [prompts.solution(p) for p in problems]
    pad = tokenizer.pad_token_id

    @torch.no_grad()
    def separate() -> None:
        completion_hidden_states(model, pack_sequences(teacher, rollouts.completion_ids, pad))
        completion_hidden_states(model, pack_sequences(teacher, solutions, pad))

    @torch.no_grad()
    def batched() -> None:
        completion_hidden_states(model, pack_sequences(teacher + teacher, rollouts.completion_ids + solutions, pad))

    @torch.no_grad()
    def shared_prompt() -> None:
        shared_prompt_hidden_states(model, teacher, [rollouts.completion_ids, solutions], pad)

    results = []
    for name, function in (("separate", separate), ("batched", batched), ("shared_prompt", shared_prompt)):
        function()  # untimed first call
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        results.append({"mode": name, **summary(times)})
    prompt_tokens = 2 * sum(map(len, teacher))
    all_tokens = prompt_tokens + rollouts.num_tokens + sum(map(len, solutions))
    share = {"teacher_prompt_token_share": prompt_tokens / all_tokens, "tokens": all_tokens}
    print(markdown_table(["teacher scoring", "ms (median)"], [[r["mode"], r["median_s"] * 1000] for r in results]))
    print(f"teacher prompt tokens: {share['teacher_prompt_token_share']:.0%} of the {all_tokens} tokens scored")
    write_results(args.out, "scoring", args, {"modes": results, **share})


if __name__ == "__main__":
    main()
