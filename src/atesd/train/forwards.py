"""The models in a training step, as the recipe (`atesd.train.recipe`) uses them: the student's rollouts, the
teacher shown the reference at exposure α, the student's forwards, and what each costs.

- `RolloutSampler`: the student's completions from its current weights (the rollout engine), graded. The grader
  is a parameter (`atesd.eval.grading.grade` by default) so that a test or an experiment can put another reward
  behind GRPO and the logged rollout accuracy without touching the recipe.
- `Teacher`: the same model with its teacher weights (`atesd.models.teacher.TeacherWeights`: initial, live or
  EMA), shown the question and the first ⌊α·m⌋ reference segments (docs/method.md#prompts-and-exposure). It reads
  its settings once (the weights, AR-OPD's anchored residual). `targets` runs its prompt once per micro-batch and
  continues it with the student's rollouts (its final hidden states there are the distillation targets) and, when
  g_t is wanted, with the reference solutions (their mean log-prob is g_t, docs/method.md#statistics). With AR-OPD
  (`teacher.anchored_residual`, docs/method.md#ar-opd) a second forward reads the rollouts after the anchor's
  prompt, and the targets mix the two passes: log q = log_softmax(log p_anchor + λ · clip(log p_full −
  log p_anchor, −c, c)), the full teacher being the step's exposure. Ours, where the paper leaves it open:
  log-probability space (the residual of two log-softmaxes is a per-token log-ratio, which a clip at 5 bounds), the
  final log_softmax that makes q a distribution again. A per-token exposure policy's teacher
  (`atesd.exposure.base.TokenMix`: the agreement and entropy gates) reads a second view the same way, and mixes the
  two per token with its own weight. The loss combines the two passes chunk by chunk
  (`atesd.losses.divergence.TeacherMix`), so no [N, V] tensor is made.
- `Student`: the student's view of ``[student prompt ; completion]`` (with gradients, for the loss), and the
  probes: ``probe_nll`` (the held-out references' per-token NLL, independent of α), each problem's reference NLL
  (exposure per problem's own-problem credit), and any completions' NLL and its gradient (the style probe and the
  alignment credit, `atesd.train.signals`).
- `StepCost`: seconds per part and the tokens through scoring forwards, so that every row of ``metrics.jsonl``
  says where its time went (docs/performance.md reads these columns).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from transformers import PreTrainedTokenizerBase

from atesd.config import Config
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.exposure.base import TokenMix, clipped_log_ratio_mix
from atesd.models.causal_lm import CausalLM
from atesd.models.sequences import (
    PackedSequences,
    completion_hidden_states,
    completion_token_logprobs,
    output_head,
    pack_sequences,
    shared_prompt_hidden_states,
    token_logprobs_from_hidden,
)
from atesd.models.teacher import TeacherWeights
from atesd.rollout import Completions, RolloutEngine, SamplingParams
from atesd.train.distributed import Processes
from atesd.train.update import micro_batches, precision

COST_PARTS = ("rollout", "teacher", "probe", "exposure")


class StepCost:
    """Seconds per part since the step started, and the tokens this process sent through scoring forwards."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(COST_PARTS, 0.0)
        self.forward_tokens = 0

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - started

    def count_forward(self, tokens: int) -> None:
        self.forward_tokens += tokens

    def record(self, processes: Processes) -> dict[str, float | int]:
        """The cost columns: forward tokens over all processes, and this process's seconds per part; the
        update's time is what the step spent outside the other parts."""
        step_time = time.perf_counter() - self.started
        forward_tokens = processes.sums({"forward_tokens": float(self.forward_tokens)})["forward_tokens"]
        parts = self.seconds
        return {"forward_tokens": int(forward_tokens), "rollout_time": parts["rollout"],
                "teacher_time": parts["teacher"], "update_time": step_time - sum(parts.values()),
                "probe_time": parts["probe"], "exposure_time": parts["exposure"], "step_time": step_time}


# ---------------------------------------------------------------------------------------------- the rollouts


class Graded(Protocol):
    @property
    def correct(self) -> bool: ...


Grader = Callable[[str, str], Graded]  # (completion text, gold answer) -> a result with .correct


@dataclass
class GradedRollouts:
    """One completion per prompt, its text and whether its answer is right."""

    completions: Completions
    correct: list[bool]
    texts: list[str]  # decoded without special tokens, as graded

    @property
    def completion_ids(self) -> list[list[int]]:
        return self.completions.completion_ids

    @property
    def num_tokens(self) -> int:
        return self.completions.num_tokens

    def record(self, processes: Processes) -> dict[str, Any]:
        """Accuracy, mean length, share cut off by the token limit, and generated tokens, over all processes."""
        sums = processes.sums({
            "correct": float(sum(self.correct)), "count": float(len(self.correct)),
            "tokens": float(self.completions.num_tokens),
            "truncated": float(sum(not f for f in self.completions.finished))})
        count = max(sums["count"], 1.0)
        record = {"rollout_accuracy": sums["correct"] / count, "completion_length": sums["tokens"] / count,
                  "truncated_rate": sums["truncated"] / count, "generated_tokens": int(sums["tokens"])}
        if self.completions.sync_gap is not None:  # the main process's engine: the one the guard checked
            record["sync_gap"] = self.completions.sync_gap
        return record


class RolloutSampler:
    """Samples and grades rollouts with `engine`; generation is seeded per step by the caller's generator."""

    def __init__(self, engine: RolloutEngine, tokenizer: PreTrainedTokenizerBase, sampling: SamplingParams,
                 grader: Grader) -> None:
        self.engine, self.tokenizer, self.sampling, self.grader = engine, tokenizer, sampling, grader

    def sample(self, prompts: list[list[int]], problems: list[Problem], generator: torch.Generator,
               cost: StepCost) -> GradedRollouts:
        with cost.timed("rollout"):
            self.engine.update_weights()  # a separate engine (vLLM) samples with the weights of the last update
            completions = self.engine.generate(prompts, self.sampling, generator)
            # decode gives one sequence's text (transformers annotates it str | list[str], for batches too)
            texts = [cast(str, self.tokenizer.decode(ids, skip_special_tokens=True))
                     for ids in completions.completion_ids]
            correct = [self.grader(text, p.answer).correct for text, p in zip(texts, problems)]
        return GradedRollouts(completions, correct, texts)


# ---------------------------------------------------------------------------------------------- the teacher


def anchored_residual(anchor_logits: torch.Tensor, full_logits: torch.Tensor, weight: float,
                      clip: float) -> torch.Tensor:
    """AR-OPD's log q from both teachers' logits [..., V] (at least float32): λ = 0 gives the anchor, λ = 1 the
    full teacher wherever the clip does not bind."""
    return clipped_log_ratio_mix(anchor_logits, full_logits, weight, clip)


@dataclass(frozen=True)
class AnchoredResidualMix:
    """AR-OPD's teacher as a per-token mix (`atesd.exposure.base.TokenMix`) whose weight is one λ at every token."""

    view_alpha: float  # the anchor's exposure
    weight: float
    clip: float

    def combine(self, teacher_logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
        return anchored_residual(view_logits, teacher_logits, self.weight, self.clip)


def teacher_mix(config: Config) -> TokenMix | None:
    """The second view the distillation teacher mixes per token: the exposure policy's (a per-token policy), AR-OPD's
    anchor (``teacher.anchored_residual``; the config refuses both at once), or None."""
    residual = config.teacher.anchored_residual
    if residual is not None:
        return AnchoredResidualMix(residual.anchor_alpha, residual.residual_weight, residual.residual_clip)
    return config.exposure.token_mix()


@dataclass
class SecondPass:
    """The second view's pass of one micro-batch and how it combines with the teacher's, as the loss's
    `TeacherMix`."""

    hidden: torch.Tensor  # the second view's final hidden states at the rollout positions [N, D]
    mix: TokenMix

    def combine(self, teacher_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
        return self.mix.combine(teacher_logits, other_logits)


@dataclass
class TeacherTargets:
    """The teacher's side of the distillation loss for one step on this process."""

    hidden: dict[int, torch.Tensor]  # final hidden states at the rollout positions, by micro-batch start
    head: torch.Tensor  # the teacher's output head (weight, and bias when it has one)
    bias: torch.Tensor | None
    reference_logp: float  # g_t: mean log-prob of the reference solutions, over all processes
    reference_logps: list[float]  # g_i: each of this process's problems' mean log-prob (NaN when not measured)
    view_hidden: dict[int, torch.Tensor]  # the second view's hidden states, by micro-batch (else empty)
    token_mix: TokenMix | None = None

    def mix(self, start: int) -> SecondPass | None:
        """The second pass the loss combines with `hidden[start]` (AR-OPD's anchor, a per-token gate's view), or
        None."""
        if self.token_mix is None:
            return None
        return SecondPass(self.view_hidden[start], self.token_mix)


class Teacher:
    """The teacher of a distillation run: its weights, what it is shown (the reference at exposure α, and AR-OPD's
    anchor), and its forwards (no gradients)."""

    def __init__(self, weights: TeacherWeights, prompts: PromptBuilder, processes: Processes, *, pad_token_id: int,
                 micro_batch_size: int, chunk_size: int, bf16_autocast: bool, mix: TokenMix | None) -> None:
        self.weights, self.prompts, self.processes = weights, prompts, processes
        self.pad_token_id, self.micro_batch_size, self.chunk_size = pad_token_id, micro_batch_size, chunk_size
        self.bf16_autocast = bf16_autocast
        self.token_mix = mix

    @torch.no_grad()
    def targets(self, problems: list[Problem], alphas: list[float], completions: list[list[int]],
                with_references: bool, cost: StepCost) -> TeacherTargets:
        """The teacher at each problem's α: its hidden states at the rollouts' positions and, `with_references`,
        g_t (NaN otherwise); both continue the same teacher prompts, which run once for the two
        (`shared_prompt_hidden_states`). With a second view (AR-OPD's anchor, a per-token gate's view), its hidden
        states too (one more teacher forward, after the prompts at its exposure)."""
        prompts = [self.prompts.teacher(p, alpha) for p, alpha in zip(problems, alphas)]
        solutions = [self.prompts.solution(p) for p in problems] if with_references else None
        mix = self.token_mix
        views = [self.prompts.teacher(p, mix.view_alpha) for p in problems] if mix is not None else None
        hidden, view_hidden, total, count, per_problem = {}, {}, 0.0, 0, []
        with cost.timed("teacher"), self.weights.scoring() as teacher_model, self._precision():
            head, bias = output_head(teacher_model)
            for span in micro_batches(len(prompts), self.micro_batch_size):
                rollouts = completions[span]
                references = solutions[span] if solutions is not None else None
                outputs = shared_prompt_hidden_states(teacher_model, prompts[span],
                                                      [rollouts] if references is None else [rollouts, references],
                                                      self.pad_token_id)
                hidden[span.start] = outputs[0]
                cost.count_forward(sum(len(ids) for part in (prompts[span], rollouts) for ids in part))
                if views is not None:
                    view_hidden[span.start] = shared_prompt_hidden_states(
                        teacher_model, views[span], [rollouts], self.pad_token_id)[0]
                    cost.count_forward(sum(len(ids) for part in (views[span], rollouts) for ids in part))
                if references is None:
                    continue
                targets = torch.tensor([token for ids in references for token in ids], device=self.processes.device)
                logprobs = token_logprobs_from_hidden(outputs[1], head, bias, targets, self.chunk_size)
                total += float(logprobs.sum())
                count += targets.numel()
                per_problem += [float(part.mean()) for part in logprobs.split([len(ids) for ids in references])]
                cost.count_forward(sum(len(ids) for ids in references))
        if solutions is None:
            return TeacherTargets(hidden, head, bias, float("nan"), [float("nan")] * len(prompts), view_hidden, mix)
        sums = self.processes.sums({"total": total, "count": float(count)})
        return TeacherTargets(hidden, head, bias, sums["total"] / max(sums["count"], 1.0), per_problem, view_hidden,
                              mix)

    def token_logprobs(self, batch: PackedSequences, cost: StepCost) -> torch.Tensor:
        """The teacher weights' log-probs of `batch`'s completion tokens (GRPO's KL reference)."""
        with cost.timed("teacher"), self.weights.scoring() as teacher_model, self._precision():
            return completion_token_logprobs(teacher_model, batch, self.chunk_size)

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        return precision(self.processes.device, self.bf16_autocast)


# ---------------------------------------------------------------------------------------------- the student


class Student:
    """Runs the student (`model`, as prepared for training; `unwrapped`, the module itself) over packed sequences."""

    def __init__(self, model: torch.nn.Module, unwrapped: CausalLM, prompts: PromptBuilder,
                 processes: Processes, *, pad_token_id: int, micro_batch_size: int, chunk_size: int,
                 bf16_autocast: bool) -> None:
        self.model, self.module, self.prompts, self.processes = model, unwrapped, prompts, processes
        self.pad_token_id, self.micro_batch_size, self.chunk_size = pad_token_id, micro_batch_size, chunk_size
        self.bf16_autocast = bf16_autocast

    def spans(self, size: int) -> list[slice]:
        return micro_batches(size, self.micro_batch_size)

    def packed(self, prompts: list[list[int]], completions: list[list[int]], cost: StepCost) -> PackedSequences:
        batch = pack_sequences(prompts, completions, self.pad_token_id).to(self.processes.device)
        cost.count_forward(int(batch.attention_mask.sum()))
        return batch

    def hidden(self, batch: PackedSequences) -> torch.Tensor:
        """Final hidden states at the completion positions, with gradients."""
        return completion_hidden_states(self.model, batch)

    def head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return output_head(self.module)

    def token_logprobs(self, batch: PackedSequences) -> torch.Tensor:
        weight, bias = self.head()
        return token_logprobs_from_hidden(self.hidden(batch), weight, bias, batch.targets, self.chunk_size)

    # ------------------------------------------------------------------ the probes

    @torch.no_grad()
    def probe_nll(self, problems: list[Problem], cost: StepCost | None = None) -> float:
        """Mean per-token NLL of the probe problems' reference solutions under the student prompt."""
        if not problems:
            return float("nan")
        return self.sequences_nll([self.prompts.student(p) for p in problems],
                                  [self.prompts.solution(p) for p in problems], cost)

    @torch.no_grad()
    def sequences_nll(self, prompts: list[list[int]], completions: list[list[int]],
                      cost: StepCost | None = None) -> float:
        """The student's mean per-token NLL of `completions` after `prompts` (the probe, and the style probe)."""
        cost = cost or StepCost()
        total, count = 0.0, 0
        with cost.timed("probe"):
            for batch, logprobs in self._logprobs(prompts, completions, cost):
                total -= float(logprobs.sum())
                count += batch.num_tokens
        return total / max(count, 1)

    def nll_gradient(self, prompts: list[list[int]], completions: list[list[int]], parameters: Sequence[torch.Tensor],
                     cost: StepCost) -> list[torch.Tensor]:
        """The gradient, with respect to `parameters`, of the student's mean per-token NLL of `completions` after
        `prompts`, at the current weights (the `.grad` of the parameters is left alone)."""
        count = sum(len(ids) for ids in completions)
        gradient = [torch.zeros_like(p) for p in parameters]
        for _, logprobs in self._logprobs(prompts, completions, cost, grad=True):
            parts = torch.autograd.grad(-logprobs.sum() / count, parameters, allow_unused=True)
            for total, part in zip(gradient, parts):
                if part is not None:
                    total.add_(part)
        return gradient

    @torch.no_grad()
    def reference_nlls(self, problems: list[Problem], cost: StepCost,
                       hints: Sequence[float] | None = None) -> list[float]:
        """Each problem's mean per-token NLL of its reference solution under the student prompt, or with `hints`
        under the teacher prompt at each problem's α there (the hinted NLL of the hint reliance), with the student's
        weights (untimed: the caller says whose cost it is)."""
        prompts = ([self.prompts.student(p) for p in problems] if hints is None
                   else [self.prompts.teacher(p, alpha) for p, alpha in zip(problems, hints)])
        return [float(-part.mean()) for batch, logprobs in self._logprobs(prompts,
                                                                          [self.prompts.solution(p) for p in problems],
                                                                          cost)
                for part in logprobs.split(batch.completion_lengths)]

    def _logprobs(self, prompts: list[list[int]], completions: list[list[int]], cost: StepCost,
                  grad: bool = False) -> Iterator[tuple[PackedSequences, torch.Tensor]]:
        """(batch, the student's log-probs of its completion tokens) per micro-batch, in eval mode (with
        gradients when `grad`)."""
        model = self.module
        was_training = model.training
        model.eval()
        try:
            for span in self.spans(len(prompts)):
                batch = self.packed(prompts[span], completions[span], cost)
                with precision(self.processes.device, self.bf16_autocast), torch.set_grad_enabled(grad):
                    yield batch, completion_token_logprobs(model, batch, self.chunk_size)
        finally:
            model.train(was_training)
