"""How well SmolLM2-135M-Instruct answers reasoning-gym's tasks before any training: the measurement that chose the
task of configs/smollm2-135m (the band a base model must be in for self-distillation to have room: 15-60 %).

For each task and setting, ``--problems`` problems (reasoning-gym seed 1) get ``--samples`` samples each from vLLM,
after atesd's student prompt (the chat template, the question, then "Please reason step by step, and put your final
answer within \\boxed{}."). Each sample is graded twice by atesd's grader: by its boxed answer alone
(``data.answer: boxed``) and by its last number where it has no boxed one (``data.answer: last_number``).
``--quick`` (a smoke run): 2 problems of each task, 2 samples each of at most 64 tokens.

    .venv-vllm/bin/python benchmarks/smollm2_competence.py --temperature 0.7 --out runs/bench/smollm2-competence.json
"""

from __future__ import annotations

import argparse
import os
import time

from harness import add_common_flags, apply_threads, markdown_table, write_results

from atesd.config import load_config
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.data.reasoning_gym import generate
from atesd.eval.grading import grader_for
from atesd.models.loading import load_tokenizer
from atesd.rollout.vllm import build_llm, import_vllm, run_in_process
from atesd.train.base_model import base_model_path

CONFIG = "configs/smollm2-135m/opsd.yaml"

TASKS = {
    "chain_sum 2 terms, 1 digit": ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
    "chain_sum 2-3 terms, 1 digit": ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}),
    "chain_sum 2 terms, 1-2 digits": ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    "basic_arithmetic 2 terms, 1 digit": ("basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                               "max_digits": 1}),
    "products 2 terms, 1 digit": ("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
    "leg_counting 1-2 animals": ("leg_counting", {"min_animals": 1, "max_animals": 2, "max_instances": 3}),
    "gsm_symbolic": ("gsm_symbolic", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    add_common_flags(parser, repeats=1)
    args = parser.parse_args()
    if args.quick:
        args.problems, args.samples, args.max_new_tokens = 2, 2, 64
    apply_threads(args.threads)
    run_in_process("this benchmark")
    config = load_config(CONFIG)
    path = base_model_path(config)
    tokenizer = load_tokenizer(config, path)
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    vllm = import_vllm()
    llm = build_llm(vllm, path, config.eval.vllm, dtype="float32", seed=0, trust_remote_code=False)
    graders = {mode: grader_for(mode) for mode in ("boxed", "last_number")}
    rows = []
    for label, (task, settings) in TASKS.items():
        entries = generate(task, settings, args.problems, seed=1)
        batch = [prompts.student(Problem(id=str(i), question=e["question"], solution="-", answer=str(e["answer"])))
                 for i, e in enumerate(entries)]
        params = vllm.SamplingParams(n=args.samples, temperature=args.temperature, max_tokens=args.max_new_tokens,
                                     seed=0, stop_token_ids=[tokenizer.eos_token_id], detokenize=False)
        started = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in batch], params, use_tqdm=False)
        seconds = time.perf_counter() - started
        texts = [(tokenizer.decode(sample.token_ids, skip_special_tokens=True), str(entry["answer"]))
                 for entry, output in zip(entries, outputs) for sample in output.outputs]
        tokens = sum(len(sample.token_ids) for output in outputs for sample in output.outputs)
        row = {"task": label, "samples": len(texts), "tokens_per_second": tokens / seconds,
               **{mode: sum(grade(text, gold).correct for text, gold in texts) / len(texts)
                  for mode, grade in graders.items()}}
        rows.append(row)
        print(row, flush=True)
    print(markdown_table(["task", "samples", "boxed", "last number"],
                         [[r["task"], r["samples"], f"{100 * r['boxed']:.1f}", f"{100 * r['last_number']:.1f}"]
                          for r in rows]))
    write_results(args.out, "smollm2_competence", args, {"temperature": args.temperature, "rows": rows})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
