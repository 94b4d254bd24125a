"""The embedded default's base model: a tiny Qwen3 warm-started on the arithmetic task, cached on disk.

The warm start is a short supervised pretraining on reference solutions, most of them after teacher prompts at
random exposures (`model.embedded.teacher_format_share`) and the rest after the student prompt, so that the
model learns both to solve problems and to use a reference in its context. Trained briefly, it leaves the gap
self-distillation needs: the teacher (which sees the reference) clearly beats the student, which is only
partly competent (docs/method.md#embedded-testbed). It builds its prompts with the recipe's `PromptBuilder`
and applies its updates with the recipe's `Updater`. The result is cached under a key of everything that
shapes it and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from atesd.config import Config
from atesd.data.arithmetic import embedded_splits
from atesd.data.prompts import PromptBuilder
from atesd.models.cache import cache_root, save_pretrained_atomically
from atesd.models.sequences import completion_token_logprobs, pack_sequences
from atesd.models.tiny import build_char_tokenizer, build_tiny_model
from atesd.train.distributed import Processes
from atesd.train.update import Updater

WARM_START_VERSION = 3  # bump when the warm-start recipe changes, to invalidate caches


def embedded_cache_root(config: Config) -> Path:
    """`model.embedded.cache_dir` when set, else atesd's cache (``$ATESD_CACHE`` or ``~/.cache/atesd``)."""
    configured = config.model.embedded.cache_dir
    return Path(configured) if configured else cache_root()


def warm_start_key(config: Config) -> str:
    """A hash of every setting that changes the warm-started model."""
    shaping = {
        "version": WARM_START_VERSION,
        "model": config.model.embedded.model_dump(exclude={"cache_dir"}),
        "task": config.data.task.model_dump(),
        "templates": config.templates.model_dump(),
        "student_chat_kwargs": config.model.student_chat_kwargs,
        "teacher_chat_kwargs": config.model.teacher_chat_kwargs,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def embedded_base_model(config: Config) -> Path:
    """The directory of the warm-started base model (model + tokenizer), trained now if not cached."""
    target = embedded_cache_root(config) / f"embedded-{warm_start_key(config)}"
    if (target / "config.json").is_file():
        return target
    model, tokenizer = warm_start(config)
    return save_pretrained_atomically(model, tokenizer, target)


def warm_start(config: Config) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Train the tiny model from scratch on student- and teacher-format reference solutions."""
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
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"]
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    rng = random.Random(settings.seed)

    def example(problem) -> tuple[list[int], list[int]]:
        if rng.random() < settings.teacher_format_share:
            # floor(alpha*m) = m only at alpha = 1 exactly, so full exposure gets its own share of draws.
            prompt = prompts.teacher(problem, min(1.0, rng.uniform(0.0, 1.25)))
        else:
            prompt = prompts.student(problem)
        return prompt, prompts.solution(problem)

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.warm_start_lr, weight_decay=0.01)
    steps = settings.warm_start_steps
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    updater = Updater(model, optimizer, scheduler, Processes(), max_grad_norm=1.0,
                      max_consecutive_bad_steps=config.train.max_consecutive_bad_steps)
    model.train()
    progress = tqdm(range(steps), desc="warm start (embedded base model)", unit="step")
    for step in progress:
        batch = [example(p) for p in rng.sample(problems, settings.warm_start_batch_size)]
        packed = pack_sequences([p for p, _ in batch], [c for _, c in batch], tokenizer.pad_token_id)
        losses: list[float] = []

        def loss_of(span: slice, packed=packed, losses=losses) -> torch.Tensor:
            loss = -completion_token_logprobs(model, packed).mean()
            losses.append(float(loss.detach()))
            return loss

        updater.step([slice(0, len(batch))], loss_of, step)
        progress.set_postfix(loss=f"{losses[0]:.3f}")
    model.eval()
    return model, tokenizer
