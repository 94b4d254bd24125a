"""The problems a run trains on, its held-out probe set, the seeded order it visits them in, and the seeds of
each step's randomness.

Before training starts, every problem is measured against the model's context (`fit_to_context`): a problem
whose longest sequence (a prompt followed by a rollout or by its reference solution) would not fit keeps its
question and has its reference solution cut to fit, or is left out with ``data.skip_invalid_rows``; both are
counted in a warning. A question too long even so, or text the tokenizer cannot encode, is an error naming the
problem (or, with ``data.skip_invalid_rows``, left out and counted).

Both the order and the seeds are functions of (run seed, step, process) alone, so a run resumed at step s
samples exactly what an uninterrupted run samples at step s.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from atesd.config import Config
from atesd.data import reasoning_gym
from atesd.data.arithmetic import embedded_splits
from atesd.data.problem import DataError, Problem
from atesd.data.prompts import PromptBuilder
from atesd.data.sources import hold_out_probe, load_problems
from atesd.eval.grading import check_answer_parses
from atesd.models.loading import context_length

logger = logging.getLogger(__name__)


def training_problems(config: Config) -> tuple[list[Problem], list[Problem]]:
    """(train, probe): the probe problems are held out of training (docs/method.md#statistics)."""
    if config.data.train == "embedded":
        splits = embedded_splits(config.data.task, config.data.probe_size)
        return splits["train"], splits["probe"]
    if config.data.train == "reasoning-gym":
        gym = config.data.reasoning_gym  # the config requires it with this source
        assert gym is not None
        problems = reasoning_gym.training_problems(gym.task, gym.settings, gym.train_size, gym.seed)
        return hold_out_probe(problems, config.data.probe_size, seed=config.data.probe_seed, source="reasoning-gym")
    # Every answer must parse: one the grader could never match would make a problem that no rollout can solve.
    problems = load_problems(config.data.train, config.data.train_split, config.data.columns,
                             skip_invalid=config.data.skip_invalid_rows, check_answer=check_answer_parses)
    return hold_out_probe(problems, config.data.probe_size, seed=config.data.probe_seed, source=config.data.train)


def context_limit(config: Config, model: torch.nn.Module) -> int | None:
    """The most tokens a sequence of this run may hold: the model's context (and vLLM's `max_model_len`)."""
    limits = [context_length(model)]
    if config.rollout.engine == "vllm":
        limits.append(config.rollout.vllm.max_model_len)
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def fit_to_context(problems: list[Problem], prompts: PromptBuilder, context: int | None, max_new_tokens: int,
                   skip_invalid: bool, source: str) -> list[Problem]:
    """`problems` as they fit in `context` tokens (see the module's docstring); `source` names them in messages."""
    if context is None:
        logger.warning("%s: the model does not say how long its context is; sequence lengths are not checked",
                       source)
        return problems
    fitted, cut, skipped = [], [], []
    for problem in problems:
        try:
            if prompts.fits(problem, context, max_new_tokens):
                fitted.append(problem)
                continue
            shorter = None if skip_invalid else prompts.truncated(problem, context, max_new_tokens)
            why = (f"its longest sequence takes {prompts.longest(problem, max_new_tokens)} tokens (with "
                   f"rollout.max_new_tokens={max_new_tokens}) of the model's context of {context}, too many even "
                   "with its reference solution cut short: shorten its question, lower rollout.max_new_tokens")
        except DataError as error:  # text the tokenizer cannot encode
            shorter, why = None, str(error)
        if shorter is not None:
            fitted.append(shorter)
            cut.append(problem.id)
        elif skip_invalid:
            skipped.append(problem.id)
        else:
            raise DataError(f"problem {problem.id!r}: {why}, or set data.skip_invalid_rows to leave such problems "
                            "out", source=source)
    if cut:
        logger.warning("%s: cut the reference solutions of %d of %d problems to fit the model's context of %d "
                       "tokens (the first: %r); set data.skip_invalid_rows to leave them out instead", source,
                       len(cut), len(problems), context, cut[0])
    if skipped:
        logger.warning("%s: left out %d of %d problems that do not fit the model's context of %d tokens or "
                       "cannot be encoded (data.skip_invalid_rows; the first: %r)", source, len(skipped),
                       len(problems), context, skipped[0])
    if problems and not fitted:
        raise DataError(f"no problem fits the model's context of {context} tokens", source=source)
    return fitted


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from (run seed, step, process), independent of anything sampled before."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class EpochOrder:
    """Problem indices in a fresh seeded permutation per epoch; the order is a function of the step alone,
    so resuming at step s continues exactly where an uninterrupted run would be."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._epoch, self._permutation = -1, np.arange(0)

    def batch(self, step: int) -> list[int]:
        indices = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.size)
            if epoch != self._epoch:
                self._epoch = epoch
                self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            indices.append(int(self._permutation[offset]))
        return indices

    def local_batch(self, step: int, process_index: int, process_count: int) -> list[int]:
        """This process's share of the step's problems (every `process_count`-th, from `process_index`)."""
        return self.batch(step)[process_index::process_count]
