"""The embedded default's base model: a tiny Qwen3 warm-started on the arithmetic task, cached on disk
(docs/method.md#embedded-testbed).

Two phases, each applied with the recipe's `Updater`:

1. copy pre-training (`model.embedded.copy_pretrain_*`): the assistant repeats a random string of the user's.
   Only the context predicts those tokens, so the model forms the copy (induction) circuit a teacher needs to
   read its reference, as pretraining gives it to real models. It forms at lr 1e-3 and never at 5e-3: the old
   recipe left it to the tail of its schedule, and whether a teacher gap appeared was a lottery over seeds and
   machines.
2. the task: the model's *own* chain of thought (one line per operation, ``problem.meta["student_solution"]``)
   after the student prompt or after teacher prompts at random exposures, whose context shows part of the
   *reference* (``problem.solution``, in another style than the model's own by default) and the answer. The
   reference is never a target: the model's style is what it writes, the reference is only ever read, as a real
   model reads a human-written solution; so the teacher's extra competence is only what its context adds. Two
   kinds of teacher-format example shape how it reads: `teacher_answer_share` of them end on a slipped last
   value (shown, not scored) and then the true boxed answer, which only the context gives (off by default: the
   teacher then boxes the answer it read after any chain, a target no student can learn), and
   `teacher_follow_share` of the others slip at one line (not scored) and carry the slip on to a wrong answer,
   so that the teacher follows the chain it scores instead of overwriting it from the reference. A third kind, off
   by default, makes the third regime: `teacher_leap_share` of them (above `teacher_leap_above` of the reference
   shown) write the model's own chain with every other line left out, steps the student cannot execute.

Trained briefly, it leaves the gap self-distillation needs: the student partly competent, the teacher clearly
better. Every build is followed by the health check (`atesd.experiments.health`); the model is cached under a key of
everything that shapes it, with its verdict, and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from atesd.config import Config
from atesd.data.arithmetic import embedded_splits, parse_expression, solve_steps
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.data.segments import shown_segments
from atesd.data.templates import chat_prompt
from atesd.experiments.health import (
    check_health,
    heldout_accuracy,
    load_health,
    refuse_unhealthy,
    save_health,
)
from atesd.models.cache import cache_root, save_pretrained_atomically
from atesd.models.sequences import completion_token_logprobs, pack_sequences
from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.train.distributed import Processes
from atesd.train.update import Updater

WARM_START_VERSION = 5  # bump when the warm-start recipe or the tokenizer changes, to invalidate caches
HEALTH_KEYS = {"health_check", "health_problems", "health_samples", "health_student_range", "health_min_gap"}
COPY_ALPHABET = "0123456789+-=\n "  # the task's characters


def embedded_cache_root(config: Config) -> Path:
    """`model.embedded.cache_dir` when set, else atesd's cache (``$ATESD_CACHE`` or ``~/.cache/atesd``)."""
    configured = config.model.embedded.cache_dir
    return Path(configured) if configured else cache_root()


def warm_start_key(config: Config) -> str:
    """A hash of every setting that changes the warm-started model."""
    shaping = {
        "version": WARM_START_VERSION,
        "model": config.model.embedded.model_dump(exclude={"cache_dir", *HEALTH_KEYS, *unset_since_cached(config)}),
        "task": config.data.task.model_dump(),
        "templates": templates_key(config),
        "student_chat_kwargs": config.model.student_chat_kwargs,
        "teacher_chat_kwargs": config.model.teacher_chat_kwargs,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


# Warm-start settings added after base models were cached, with the value every model cached before had: a setting
# at that value is left out of the key, so those models keep their keys (the next such setting is one entry here).
ADDED_AFTER_CACHING = {"teacher_answer_above": None, "teacher_leap_share": 0.0, "teacher_leap_above": None}


def unset_since_cached(config: Config) -> set[str]:
    """The settings of `ADDED_AFTER_CACHING` still at the value the models cached before them had."""
    settings = config.model.embedded
    return {name for name, before in ADDED_AFTER_CACHING.items() if getattr(settings, name) == before}


def templates_key(config: Config) -> dict:
    """The templates' settings; the teacher boundary's only when it adds something, so that the models cached
    before the setting existed keep their keys (at ``open`` it changes no prompt)."""
    templates = config.templates
    return templates.model_dump(exclude={"teacher_boundary", "think_open"} if templates.teacher_boundary == "open"
                                else set())


def embedded_base_model(config: Config) -> Path:
    """The directory of the warm-started base model (model + tokenizer), trained now if not cached; with
    `model.embedded.health_check`, refused (`UnhealthyBaseModelError`) when outside the band."""
    target = embedded_cache_root(config) / f"embedded-{warm_start_key(config)}"
    model: PreTrainedModel | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    if not (target / "config.json").is_file():
        model, tokenizer = warm_start(config)
        save_pretrained_atomically(model, tokenizer, target)
    if config.model.embedded.health_check:
        report = load_health(target)
        if report is None or not report.matches(config):
            if model is None or tokenizer is None:  # both None, or both made by warm_start
                model = AutoModelForCausalLM.from_pretrained(target)
                tokenizer = AutoTokenizer.from_pretrained(target)
            report = check_health(config, model, tokenizer)
            save_health(report, target)
            print(report.summary(), flush=True)
        refuse_unhealthy(report, target)
    return target


@torch.inference_mode(False)
@torch.enable_grad()
def warm_start(config: Config) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Train the tiny model from scratch: copy pre-training, then the task (see the module docstring).

    It trains in its own grad mode, whatever its caller's: a base model is warm-started on first use, and that
    first use may be an analysis running under `torch.no_grad()` (the mismatch statistics of `atesd sweep`)."""
    settings = config.model.embedded
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        tokenizer,
        hidden_size=settings.hidden_size,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        num_kv_heads=settings.num_kv_heads,
        intermediate_size=settings.intermediate_size,
        max_positions=settings.max_positions,
        seed=settings.seed,
    )
    rng = random.Random(settings.seed)
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    model.train()
    copy_pretrain(model, tokenizer, prompts, config, rng)
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"]

    def example(problem: Problem) -> tuple[list[int], list[int], list[float]]:
        """(prompt ids, completion ids, per-token loss weights) of one warm-start example."""
        own = problem.meta.get("student_solution", problem.solution)
        if rng.random() < settings.teacher_format_share:
            # floor(alpha*m) = m only at alpha = 1 exactly, so full exposure gets its own share of draws.
            alpha = min(1.0, rng.uniform(0.0, 1.25))
            prompt = prompts.teacher(problem, alpha)
            if rng.random() < settings.teacher_answer_share and answers_at(settings.teacher_answer_above, alpha,
                                                                           prompts.segments(problem)):
                return (prompt, *slipped_completion(own, rng, prompts.encode, tokenizer.eos_token_id))
            if settings.teacher_leap_share and rng.random() < settings.teacher_leap_share and answers_at(
                    settings.teacher_leap_above, alpha, prompts.segments(problem)):
                completion = prompts.encode(leaping_chain(own)) + [tokenizer.eos_token_id]
                return prompt, completion, [1.0] * len(completion)
            if settings.teacher_follow_share and rng.random() < settings.teacher_follow_share:
                return (prompt, *carried_slip_completion(problem.question, rng, prompts.encode,
                                                         tokenizer.eos_token_id))
        else:
            prompt = prompts.student(problem)
        completion = prompts.encode(own) + [tokenizer.eos_token_id]
        return prompt, completion, [1.0] * len(completion)

    steps = settings.warm_start_steps
    warmup = max(1, settings.warm_start_warmup_steps)
    updater = updater_for(model, settings.warm_start_lr, config, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    target, every = settings.warm_start_target_accuracy, settings.warm_start_check_every
    progress = tqdm(range(steps), desc="warm start (embedded base model)", unit="step")
    for step in progress:
        batch = [example(p) for p in rng.sample(problems, settings.warm_start_batch_size)]
        packed = pack_sequences([p for p, _, _ in batch], [c for _, c, _ in batch], tokenizer.pad_token_id)
        weights = torch.tensor([w for _, _, ws in batch for w in ws])
        progress.set_postfix(loss=f"{weighted_step(updater, model, packed, weights, step):.3f}")
        # Early stopping on the student's held-out accuracy: seeds learn the arithmetic at different speeds, so a
        # fixed step count leaves a student anywhere in a wide range; stopping at a target centres it in the band.
        if target is not None and (step + 1) % every == 0 and heldout_accuracy(config, model, tokenizer, 2) >= target:
            progress.write(f"warm start: the student reached {target:.0%} held-out accuracy after {step + 1} steps")
            break
    progress.close()
    model.eval()
    return model, tokenizer


def copy_pretrain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: PromptBuilder,
                  config: Config, rng: random.Random, batch_size: int = 16) -> None:
    """Generic copy pre-training: a user turn of 8-16 random task characters, which the assistant repeats."""
    settings = config.model.embedded
    updater = updater_for(model, settings.copy_pretrain_lr, config, lambda s: min(1.0, (s + 1) / 20))
    for step in tqdm(range(settings.copy_pretrain_steps), desc="copy pre-training (embedded)", unit="step"):
        texts = ["".join(rng.choice(COPY_ALPHABET) for _ in range(rng.randint(8, 16))) for _ in range(batch_size)]
        packed = pack_sequences([prompts.encode(chat_prompt(tokenizer, text, config.model.student_chat_kwargs))
                                 for text in texts],
                                [prompts.encode(text) + [tokenizer.eos_token_id] for text in texts],
                                tokenizer.pad_token_id)
        weighted_step(updater, model, packed, torch.ones(int(packed.targets.numel())), step)


def updater_for(model: PreTrainedModel, lr: float, config: Config, schedule) -> Updater:
    """AdamW (weight decay 0.01) at `lr` times `schedule(step)`, clipped at norm 1, on one process."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return Updater(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), Processes(),
                   max_grad_norm=1.0, max_consecutive_bad_steps=config.train.max_consecutive_bad_steps)


def weighted_step(updater: Updater, model: PreTrainedModel, packed, weights: torch.Tensor, step: int) -> float:
    """One update on the weighted mean NLL of the packed completions; returns the loss."""
    losses: list[float] = []

    def loss_of(span: slice) -> torch.Tensor:
        loss = -(completion_token_logprobs(model, packed) * weights).sum() / weights.sum()
        losses.append(float(loss.detach()))
        return loss

    updater.step([slice(0, 1)], loss_of, step)
    updater.stop_if_diverged()
    return losses[0]


def carried_slip_completion(question: str, rng: random.Random, encode, eos_token_id: int
                            ) -> tuple[list[int], list[float]]:
    """The chain of thought of `question` with one line's value off by 1 to 3 (weighted 0: read, never taught)
    and every later line computed on from it, to the boxed wrong answer (weighted 1): the teacher learns to score
    the chain in front of it, as a chain that made one mistake and carried it on, instead of overwriting its
    values with the reference's (a correction at a line the student got wrong already, which it cannot learn)."""
    operands, ops = parse_expression(question)
    slipped_line = rng.randrange(len(ops))
    lines, answer = solve_steps(operands, ops, slip=(slipped_line, rng.choice([-3, -2, -1, 1, 2, 3])))
    left, value = lines[slipped_line].rsplit("=", 1)
    head = encode("\n".join([*lines[:slipped_line], left + "="]))
    slip = encode(value)
    tail = encode("\n" + "\n".join([*lines[slipped_line + 1:], f"\\boxed{{{answer}}}"])) + [eos_token_id]
    return head + slip + tail, [1.0] * len(head) + [0.0] * len(slip) + [1.0] * len(tail)


def leaping_chain(solution: str) -> str:
    """`solution` (lines ``a+b=v``, then ``\\boxed{answer}``) with every other line left out, counting back from
    the last, which stays: each kept line but the first starts from a value the chain never wrote (a leap over one
    operation), and the boxed answer is the true one."""
    lines = solution.split("\n")
    equations = [i for i, line in enumerate(lines) if "=" in line]
    dropped = set(equations[-2::-2])
    return "\n".join(line for i, line in enumerate(lines) if i not in dropped)


def answers_at(above: float | None, alpha: float, segments: int) -> bool:
    """Whether a slipped-answer (or leaping) example may be drawn at exposure `alpha` of a reference of `segments`
    segments: always without its `..._above` setting, else only where more than that share of them is shown."""
    return above is None or shown_segments(alpha, segments) > above * segments


def slipped_completion(solution: str, rng: random.Random, encode, eos_token_id: int
                       ) -> tuple[list[int], list[float]]:
    """`solution` (lines ``a+b=v``, then ``\\boxed{answer}``) with the last line's value off by 1 to 3, that
    value's tokens weighted 0 (the model reads the slip, it is never taught to make it), everything else 1:
    the boxed answer that follows is the true one, which only a context holding the answer gives."""
    lines = solution.split("\n")
    equations = [i for i, line in enumerate(lines) if "=" in line]
    value = lines[equations[-1]].rsplit("=", 1)[1] if equations else ""
    if not value.strip().lstrip("-").isdigit():
        ids = encode(solution) + [eos_token_id]
        return ids, [1.0] * len(ids)
    index = equations[-1]
    left = lines[index].rsplit("=", 1)[0]
    wrong = str(int(value) + rng.choice([-3, -2, -1, 1, 2, 3]))
    head = encode("\n".join([*lines[:index], left + "="]))
    slip = encode(wrong)
    tail = encode("\n" + "\n".join(lines[index + 1:])) + [eos_token_id]
    return head + slip + tail, [1.0] * len(head) + [0.0] * len(slip) + [1.0] * len(tail)
