"""The forwards of a training step: the student's (with gradients), the teacher's (without), and the probe.

- `teacher_targets`: the teacher at exposure α reads its prompt once per micro-batch and continues it with the
  student's rollouts (its final hidden states there are the distillation targets) and with the reference
  solutions (their mean log-prob is g_t, docs/method.md#statistics), when g_t is wanted that step. With AR-OPD's
  anchored residual (`teacher.anchored_residual`, `atesd.train.anchored_teacher`) a second teacher forward reads
  the rollouts after the anchor's prompts, and the targets combine the two passes.
- `student_hidden` / `student_token_logprobs`: the student's view of ``[student prompt ; completion]``.
- `probe_nll`: the student's per-token NLL of the held-out probe references, independent of α;
  `reference_nlls`: the same per problem, for exposure per problem's own-problem credit; `sequences_nll` and
  `nll_gradient`: any completions' NLL and its gradient (the style probe, and alignment with a probe).

Every forward counts its tokens into the step's `StepCost`; teacher forwards are timed as ``teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atesd.config import AnchoredResidualConfig
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.models.sequences import (
    PackedSequences,
    completion_hidden_states,
    completion_token_logprobs,
    output_head,
    pack_sequences,
    shared_prompt_hidden_states,
    token_logprobs_from_hidden,
)
from atesd.models.teacher import Teacher
from atesd.train.anchored_teacher import AnchoredResidual
from atesd.train.cost import StepCost
from atesd.train.distributed import Processes
from atesd.train.update import micro_batches, precision


@dataclass
class TeacherTargets:
    """The teacher's side of the distillation loss for one step on this process."""

    hidden: dict[int, torch.Tensor]  # final hidden states at the rollout positions, by micro-batch start
    head: torch.Tensor  # the teacher's output head (weight, and bias when it has one)
    bias: torch.Tensor | None
    reference_logp: float  # g_t: mean log-prob of the reference solutions, over all processes
    reference_logps: list[float]  # g_i: each of this process's problems' mean log-prob (NaN when not measured)
    anchor_hidden: dict[int, torch.Tensor]  # AR-OPD: the anchor teacher's hidden states, by micro-batch (else empty)
    residual: AnchoredResidualConfig | None = None

    def mix(self, start: int) -> AnchoredResidual | None:
        """The second pass the loss combines with `hidden[start]` (AR-OPD's anchor), or None."""
        if self.residual is None:
            return None
        return AnchoredResidual(self.anchor_hidden[start], self.residual.residual_weight, self.residual.residual_clip)


class Scorer:
    """Runs the student (`model`, as prepared for training) and the `teacher` over packed sequences."""

    def __init__(self, model: torch.nn.Module, student: torch.nn.Module, teacher: Teacher, prompts: PromptBuilder,
                 processes: Processes, *, pad_token_id: int, micro_batch_size: int, chunk_size: int,
                 bf16_autocast: bool, anchored_residual: AnchoredResidualConfig | None = None) -> None:
        self.model, self.student, self.teacher, self.prompts = model, student, teacher, prompts
        self.processes = processes
        self.pad_token_id, self.micro_batch_size, self.chunk_size = pad_token_id, micro_batch_size, chunk_size
        self.bf16_autocast = bf16_autocast
        self.anchored_residual = anchored_residual

    def spans(self, size: int) -> list[slice]:
        return micro_batches(size, self.micro_batch_size)

    def packed(self, prompts: list[list[int]], completions: list[list[int]], cost: StepCost) -> PackedSequences:
        batch = pack_sequences(prompts, completions, self.pad_token_id).to(self.processes.device)
        cost.count_forward(int(batch.attention_mask.sum()))
        return batch

    # ------------------------------------------------------------------ the student (with gradients)

    def student_hidden(self, batch: PackedSequences) -> torch.Tensor:
        return completion_hidden_states(self.model, batch)

    def student_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return output_head(self.student)

    def student_token_logprobs(self, batch: PackedSequences) -> torch.Tensor:
        weight, bias = self.student_head()
        return token_logprobs_from_hidden(self.student_hidden(batch), weight, bias, batch.targets, self.chunk_size)

    # ------------------------------------------------------------------ the teacher (no gradients)

    @torch.no_grad()
    def teacher_targets(self, teacher_prompts: list[list[int]], completions: list[list[int]],
                        solutions: list[list[int]] | None, cost: StepCost,
                        anchor_prompts: list[list[int]] | None = None) -> TeacherTargets:
        """The teacher's hidden states at the rollouts' positions and, when `solutions` are given, g_t (NaN
        otherwise); both continue the same teacher prompts, which run once for the two
        (`shared_prompt_hidden_states`). With AR-OPD's anchored residual, the anchor's hidden states after
        `anchor_prompts` too (one more teacher forward)."""
        hidden, anchor_hidden, total, count, per_problem = {}, {}, 0.0, 0, []
        residual = self.anchored_residual
        if (residual is None) != (anchor_prompts is None):
            raise ValueError("anchor prompts are given exactly when teacher.anchored_residual is set")
        with cost.timed("teacher"), self.teacher.scoring() as teacher_model, self._precision():
            head, bias = output_head(teacher_model)
            for span in self.spans(len(teacher_prompts)):
                prompts, rollouts = teacher_prompts[span], completions[span]
                references = solutions[span] if solutions is not None else None
                outputs = shared_prompt_hidden_states(teacher_model, prompts,
                                                      [rollouts] if references is None else [rollouts, references],
                                                      self.pad_token_id)
                hidden[span.start] = outputs[0]
                cost.count_forward(sum(len(ids) for part in (prompts, rollouts) for ids in part))
                if anchor_prompts is not None:
                    anchor_hidden[span.start] = shared_prompt_hidden_states(
                        teacher_model, anchor_prompts[span], [rollouts], self.pad_token_id)[0]
                    cost.count_forward(sum(len(ids) for part in (anchor_prompts[span], rollouts) for ids in part))
                if references is None:
                    continue
                targets = torch.tensor([token for ids in references for token in ids], device=self.processes.device)
                logprobs = token_logprobs_from_hidden(outputs[1], head, bias, targets, self.chunk_size)
                total += float(logprobs.sum())
                count += targets.numel()
                per_problem += [float(part.mean()) for part in logprobs.split([len(ids) for ids in references])]
                cost.count_forward(sum(len(ids) for ids in references))
        if solutions is None:
            return TeacherTargets(hidden, head, bias, float("nan"), [float("nan")] * len(teacher_prompts),
                                  anchor_hidden, residual)
        sums = self.processes.sums({"total": total, "count": float(count)})
        return TeacherTargets(hidden, head, bias, sums["total"] / max(sums["count"], 1.0), per_problem, anchor_hidden,
                              residual)

    def teacher_token_logprobs(self, batch: PackedSequences, cost: StepCost) -> torch.Tensor:
        with cost.timed("teacher"), self.teacher.scoring() as teacher_model, self._precision():
            return completion_token_logprobs(teacher_model, batch, self.chunk_size)

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

    def nll_gradient(self, prompts: list[list[int]], completions: list[list[int]], parameters: list[torch.Tensor],
                     cost: StepCost) -> list[torch.Tensor]:
        """The gradient, with respect to `parameters`, of the student's mean per-token NLL of `completions` after
        `prompts`, at the current weights (the `.grad` of the parameters is left alone)."""
        count = sum(len(ids) for ids in completions)
        gradient = [torch.zeros_like(p) for p in parameters]
        for batch, logprobs in self._logprobs(prompts, completions, cost, grad=True):
            parts = torch.autograd.grad(-logprobs.sum() / count, parameters, allow_unused=True)
            for total, part in zip(gradient, parts):
                if part is not None:
                    total.add_(part)
        return gradient

    @torch.no_grad()
    def reference_nlls(self, problems: list[Problem], cost: StepCost) -> list[float]:
        """Each problem's mean per-token NLL of its reference solution under the student prompt (untimed: the
        caller says whose cost it is)."""
        return [float(-part.mean()) for batch, logprobs in self._logprobs([self.prompts.student(p) for p in problems],
                                                                          [self.prompts.solution(p) for p in problems],
                                                                          cost)
                for part in logprobs.split(batch.completion_lengths)]

    def _logprobs(self, prompts: list[list[int]], completions: list[list[int]], cost: StepCost, grad: bool = False):
        """(batch, the student's log-probs of its completion tokens) per micro-batch, in eval mode (with
        gradients when `grad`)."""
        model = self.student
        was_training = model.training
        model.eval()
        try:
            for span in self.spans(len(prompts)):
                batch = self.packed(prompts[span], completions[span], cost)
                with self._precision(), torch.set_grad_enabled(grad):
                    yield batch, completion_token_logprobs(model, batch, self.chunk_size)
        finally:
            model.train(was_training)

    def _precision(self):
        return precision(self.processes.device, self.bf16_autocast)
