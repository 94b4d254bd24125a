"""Where the teacher's lead lies on the embedded default: the distillation signal split by whether a student could
learn it.

The base model samples one student rollout per training problem; the teacher (the same model, reference at
exposure α in its prompt) scores it, as in an OPSD step. Each completion token is put in a class:

- ``on-track``: every earlier line of the rollout equals the true solution's line, so a teacher that prefers
  another token here corrects a step the student could have computed itself: a signal it can learn;
- ``off-track``: after the rollout's first wrong line; the teacher's preference here (the reference's running
  total, the true answer) is inconsistent with the chain in front of it: a student without the reference
  cannot learn it;

and by kind: ``value`` (after ``=``), ``operand`` (the left-hand side of a line), ``box`` (the boxed answer line).
Per class it reports the tokens, the share of the summed KL(teacher || student) (the forward-KL loss of
docs/method.md#divergences), the mean KL and, at on-track values, how often the teacher's and the student's
top-1 token is the true one (the teacher's learnable edge).

    python benchmarks/testbed_signal.py --problems 150 model.embedded.seed=0 model.embedded.teacher_answer_share=0

``--quick`` (a smoke run): 8 problems on the tiny embedded model (harness.quick_overrides; key=value overrides still
apply after it).

Not a test: nothing is asserted; it prints a table and writes the figures as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from harness import quick_overrides

import atesd.experiments  # noqa: F401  (registers the embedded testbed's model)
from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.data.prompts import PromptBuilder
from atesd.train.base_model import load_model


def token_classes(text_pieces: list[str], true_lines: list[str]) -> list[str]:
    """The class (``on-value``, ``off-box``, ...) of each decoded completion token."""
    classes, text, line_no, on_track = [], "", 0, True
    for piece in text_pieces:
        line = text.split("\n")[-1]
        kind = "value" if "=" in line else "box" if line.startswith("\\") else "operand"
        classes.append(f"{'on' if on_track else 'off'}-{kind}")
        text += piece
        if piece == "\n":
            finished = text.split("\n")[-2]
            on_track = on_track and line_no < len(true_lines) and finished == true_lines[line_no]
            line_no += 1
    return classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--config", default="configs/embedded/opsd.yaml")
    parser.add_argument("--alpha", type=float, default=1.0, help="the teacher's exposure (default 1: OPSD)")
    parser.add_argument("--problems", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of problems and their rollouts (not "
                        "the base model: that is model.embedded.seed)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 problems on the tiny embedded model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.problems = min(args.problems, 8)
    config = load_config(args.config, [*quick_overrides(args.quick), *args.overrides])
    model, tokenizer = load_model(config)
    model.eval()
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    problems = random.Random(args.seed).sample(embedded_splits(config.data.task, config.data.probe_size)["train"],
                                               args.problems)
    torch.manual_seed(args.seed)
    tokens, kl_sum, teacher_right, student_right = (defaultdict(float) for _ in range(4))

    def logprobs(prompt: list[int], completion: list[int]) -> torch.Tensor:
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1]
        return torch.log_softmax(logits.float(), -1)

    with torch.no_grad():
        for problem in problems:
            prompt = prompts.student(problem)
            completion = model.generate(torch.tensor([prompt]), do_sample=True, temperature=config.rollout.temperature,
                                        top_k=0, max_new_tokens=config.rollout.max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
            student, teacher = logprobs(prompt, completion), logprobs(prompts.teacher(problem, args.alpha), completion)
            kl = (teacher.exp() * (teacher - student)).sum(-1)
            pieces = [tokenizer.decode([i]) for i in completion]
            truth = problem.meta["student_solution"]
            for position, kind in enumerate(token_classes(pieces, truth.split("\n"))):
                tokens[kind] += 1
                kl_sum[kind] += float(kl[position])
                if kind == "on-value":  # the true next character, as the rollout is on track
                    true_next = truth[len("".join(pieces[:position])):][:1]
                    teacher_right[kind] += tokenizer.decode([int(teacher[position].argmax())]) == true_next
                    student_right[kind] += tokenizer.decode([int(student[position].argmax())]) == true_next
    total = sum(kl_sum.values())
    rows = {kind: {"tokens": int(tokens[kind]), "kl_share": kl_sum[kind] / total,
                   "mean_kl": kl_sum[kind] / tokens[kind],
                   **({"teacher_top1_true": teacher_right[kind] / tokens[kind],
                       "student_top1_true": student_right[kind] / tokens[kind]} if kind == "on-value" else {})}
            for kind in sorted(tokens)}
    print(f"alpha={args.alpha:g}, {args.problems} problems, overrides: {' '.join(args.overrides) or '(none)'}")
    print("| class | tokens | share of KL | mean KL | top-1 true: teacher / student |\n|---|---|---|---|---|")
    for kind, row in rows.items():
        edge = (f"{row['teacher_top1_true']:.3f} / {row['student_top1_true']:.3f}" if "teacher_top1_true" in row
                else "")
        print(f"| {kind} | {row['tokens']} | {row['kl_share']:.2f} | {row['mean_kl']:.3f} | {edge} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"alpha": args.alpha, "overrides": args.overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
