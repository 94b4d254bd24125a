"""The exposure part of a distillation step (docs/method.md#prompts-and-exposure): one α per problem of the batch
from the exposure policy and, for a policy per problem, the measurements its credit needs.

A batch-level policy decides on the main process, and every process uses that α for all of its problems. A policy
per problem (exposure per problem, docs/method.md#exposure-per-problem; the peers' rules) decides each problem's α
from what the problem's rollout showed (its `ProblemView`: grade, length, text, and the reference's segments), so it
decides after the rollouts; before the update the reference NLLs, under the student prompt, of the problems it asks
for are measured (exposure per problem's credit: this step's credited ones, and those of L steps ago).
"""

from __future__ import annotations

from statistics import fmean

from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.exposure import AnyExposurePolicy, ProblemView
from atesd.train.cost import StepCost
from atesd.train.distributed import Processes
from atesd.train.rollouts import GradedRollouts
from atesd.train.scoring import Scorer, TeacherTargets


def step_alphas(policy: AnyExposurePolicy, step: int, problems: list[Problem], keys: list[int],
                rollouts: GradedRollouts, prompts: PromptBuilder, processes: Processes,
                max_new_tokens: int) -> list[float]:
    """The α of each of this process's `problems` (`keys`: their indices in the training set)."""
    if not policy.per_problem:
        alpha = float(processes.decided_by_main(lambda: policy.alpha(step)))
        return [alpha] * len(problems)
    views = [ProblemView(key, correct, len(ids) / max_new_tokens, prompts.segments(problem),
                         None if problem.meta.get("bucket") is None else str(problem.meta["bucket"]), text,
                         prompts.segment_texts(problem))
             for key, problem, correct, ids, text in zip(keys, problems, rollouts.correct, rollouts.completion_ids,
                                                         rollouts.texts)]
    return policy.alphas(step, views)


def alpha_record(policy: AnyExposurePolicy, alphas: list[float]) -> float:
    """The step's ``alpha`` column: the batch's α, or for a policy per problem the mean of the problems' α (each
    problem's α is in decisions.jsonl)."""
    return fmean(alphas) if policy.per_problem else alphas[0]


def measure_credit(policy: AnyExposurePolicy, step: int, train_problems: list[Problem],
                   scorer: Scorer, teacher: TeacherTargets, cost: StepCost) -> None:
    """Exposure per problem: the reference NLLs its credit needs, before this step's update, and each problem's
    g_i (none under the alignment credit); nothing for a batch-level policy."""
    if not policy.per_problem:
        return
    wanted = policy.nll_wanted(step)
    policy.measured(step, scorer.reference_nlls([train_problems[key] for key in wanted], cost),
                    teacher.reference_logps)


def credit_alignment(policy: AnyExposurePolicy, step: int, credits: list[float]) -> None:
    """Exposure per problem under the alignment credit: each problem's credit (`atesd.train.signals`), after the
    update and before `observe`; nothing for a batch-level policy (random exposure only logs it)."""
    if policy.per_problem:
        policy.aligned(step, credits)
