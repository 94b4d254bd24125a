"""Exposure signals measured by the trainer beyond the paper's (ours, docs/controller.md#signals-with-power).

- **The style probe**: at the start of a run, the base model samples `controller.style_probe_samples` solutions
  of each probe problem; the verified-correct ones are kept, fixed for the run (and saved in its checkpoints).
  After every update, ``style_nll`` is the student's mean per-token NLL of them under the student prompt: how
  likely the student now finds solving in its own style, where ``probe_nll`` reads the references' notation.
- **Alignment**: before update t, each problem i of the batch gets a credit
  c_i = ⟨∇ L_i, ∇ ℓ_probe⟩ / ‖∇ ℓ_probe‖, the first-order drop of the probe loss that training on problem i
  alone would cause (per unit step along its gradient): L_i is problem i's part of the step's distillation loss
  (its tokens' loss times the step's normalisation) and ℓ_probe the style probe's NLL (or the probe references',
  or, ``contrast``, the style probe's NLL of the base model's right solutions minus that of its wrong ones),
  both at the weights before the update. It is measured as a forward difference along the unit probe gradient
  û (without the embeddings' padding rows: `without_padding_rows`), c_i = (L_i(w + εû) − L_i(w)) / ε with
  ε = `EPSILON`: L_i(w) is the update's own forward, so a step costs one forward of the student over its
  rollouts (no backward), and û one backward over the probe every `controller.alignment_refresh` steps (the
  direction is kept in between). The weights are restored bit for bit. Problems of one step share their weights
  and their update, so comparing their credits on their own α removes every difference between steps.

`ExposureSignals` holds both for the recipe, as the exposure policy's settings ask
(`atesd.exposure.base.ExposureSettings.signal_settings`); everything is measured on the main process (one process
only when alignment is on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import torch

from atesd.config import Config, ConfigError
from atesd.data.problem import Problem
from atesd.errors import UserError
from atesd.exposure.signals import within_step_slope
from atesd.losses import DivergenceOutput
from atesd.train.forwards import RolloutSampler, StepCost, Student
from atesd.train.problems import step_seed

# The forward difference's step along the unit probe gradient: on the embedded model (weights of norm 48, an
# update of norm ~0.4) its credits correlate at 0.999 with central differences of step 1e-2.
EPSILON = 3e-3
STYLE_SEED = 0x57E  # with data.probe_seed: the style probe is the same for every run of a base model


@dataclass
class StyleProbe:
    """The base model's verified-correct solutions of the probe problems, under the student prompt (and its wrong
    ones, which the contrast probe pushes away from)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    wrong_prompts: list[list[int]] = field(default_factory=list)
    wrong_completions: list[list[int]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "completions": self.completions, "wrong_prompts": self.wrong_prompts,
                "wrong_completions": self.wrong_completions}


def collect_style_probe(sampler: RolloutSampler, prompts: list[list[int]], problems: list[Problem], samples: int,
                        seed: int) -> StyleProbe:
    """`samples` rollouts of each of `problems` (student `prompts`) from the current weights, the right ones kept."""
    repeated_prompts = [prompt for prompt in prompts for _ in range(samples)]
    repeated = [problem for problem in problems for _ in range(samples)]
    rollouts = sampler.sample(repeated_prompts, repeated, torch.Generator().manual_seed(seed), StepCost())
    kept = [(prompt, ids) for prompt, ids, correct in zip(repeated_prompts, rollouts.completion_ids, rollouts.correct)
            if correct and ids]
    wrong = [(prompt, ids) for prompt, ids, correct in zip(repeated_prompts, rollouts.completion_ids, rollouts.correct)
             if not correct and ids]
    if not kept:
        raise UserError(f"the style probe: the base model solved none of the {len(problems)} probe problems in "
                        f"{samples} samples each; raise exposure.controller.style_probe_samples or data.probe_size, "
                        "or use progress_signal probe_nll and alignment_probe reference")
    return StyleProbe([prompt for prompt, _ in kept], [ids for _, ids in kept], [prompt for prompt, _ in wrong],
                      [ids for _, ids in wrong])


def losses_along(parameters: Sequence[torch.Tensor], direction: Sequence[torch.Tensor],
                 losses_at: Callable[[], list[float]], epsilon: float = EPSILON) -> list[float]:
    """``losses_at()`` at the weights moved by ε · `direction`; the parameters are restored bit for bit after."""
    saved = [p.detach().clone() for p in parameters]
    try:
        with torch.no_grad():
            for p, d in zip(parameters, direction):
                p.add_(d, alpha=epsilon)
            return losses_at()
    finally:
        with torch.no_grad():
            for p, s in zip(parameters, saved):
                p.copy_(s)


def problem_losses(per_token_loss: torch.Tensor, completions: Sequence[Sequence[int]], scale: float) -> list[float]:
    """Each problem's part of the step's loss: its completion tokens' losses (in the order of `completions`),
    summed, times the step's normalisation `scale`."""
    return [float(part.double().sum()) * scale for part in per_token_loss.split([len(ids) for ids in completions])]


def without_padding_rows(model: torch.nn.Module, parameters: Sequence[torch.Tensor],
                         gradient: list[torch.Tensor]) -> list[torch.Tensor]:
    """`gradient` with the padding row of every embedding (``padding_idx``) set to 0, in place. Autograd gives that
    row no gradient through the embedding, whose output still depends on it wherever the token occurs (an EOS-like pad
    token inside a rollout), so a step along it would change the losses in a way no update ever does."""
    index = {id(p): i for i, p in enumerate(parameters)}
    for module in model.modules():
        row = getattr(module, "padding_idx", None)
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Embedding) and row is not None and id(weight) in index:
            gradient[index[id(weight)]][row] = 0
    return gradient


def unit(gradient: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """`gradient` over its norm, and the norm (the zero direction when it is 0)."""
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gradient))
    return [g / norm if norm > 0 else torch.zeros_like(g) for g in gradient], norm


class ExposureSignals:
    """The style probe and the alignment of a run (both off unless its exposure settings ask: `uses_style_probe`,
    `measures_alignment`)."""

    def __init__(self, config: Config, student: Student, probe_problems: list[Problem], processes_count: int) -> None:
        exposure = config.exposure
        self.config, self.student, self.probe_problems = config, student, probe_problems
        self.settings = settings = exposure.signal_settings()
        self.style = exposure.uses_style_probe
        # its NLL after every update only where it is the progress signal (alignment needs only its gradient)
        self.logs_style = settings is not None and settings.progress_signal == "style_nll"
        self.aligns = exposure.measures_alignment
        self.alignment_probe = settings.alignment_probe if settings is not None else None
        self.refresh = settings.alignment_refresh if settings is not None else 1
        # û, refreshed every `refresh` steps and at every checkpoint's step: not checkpointed, as a resumed run
        # starts at a checkpoint's step and refreshes it there like an uninterrupted one
        self.direction: list[torch.Tensor] | None = None
        self.norm = math.nan
        self.checkpoint_every = config.train.checkpoint_every
        self.plus: list[float] = []
        self.epsilon = EPSILON
        if self.aligns and processes_count > 1:
            raise ConfigError("controller.credit: alignment runs on one process for now (each problem's credit is "
                              "measured where it is trained): run without data parallelism")
        self.probe: StyleProbe | None = None
        self.last_style_nll: float | None = None

    # ------------------------------------------------------------------ the style probe

    def start(self, sampler: RolloutSampler, cost: StepCost | None = None) -> None:
        """Before the first update: sample the style probe from the base model (unless restored) and measure it."""
        if not self.style:
            return
        if self.probe is None:
            assert self.settings is not None  # the style probe is one of these signal settings
            self.probe = collect_style_probe(sampler, [self.student.prompts.student(p) for p in self.probe_problems],
                                             self.probe_problems, self.settings.style_probe_samples,
                                             step_seed(STYLE_SEED, self.config.data.probe_seed))
        if self.last_style_nll is None and self.logs_style:
            self.last_style_nll = self.style_nll(cost)

    def style_nll(self, cost: StepCost | None = None) -> float:
        assert self.probe is not None
        return self.student.sequences_nll(self.probe.prompts, self.probe.completions, cost)

    def after_update(self, measured: bool, cost: StepCost) -> dict[str, Any]:
        """``style_nll_before`` and ``style_nll`` of the step's record (measured when the probe NLL is), where the
        style probe's NLL is the progress signal."""
        if not self.logs_style:
            return {}
        before = self.last_style_nll
        if measured:
            self.last_style_nll = self.style_nll(cost)
        return {"style_nll_before": before, "style_nll": self.last_style_nll,
                "style_probe_size": len(self.probe.completions) if self.probe else 0}

    # ------------------------------------------------------------------ alignment

    def probe_gradient(self, parameters: Sequence[torch.Tensor], cost: StepCost) -> list[torch.Tensor]:
        """∇ ℓ_probe: of the style probe's NLL, of the probe references', or (contrast) of the style probe's NLL
        of its right solutions minus that of its wrong ones."""
        student, probe = self.student, self.probe
        if self.alignment_probe == "reference":
            problems = self.probe_problems
            return student.nll_gradient([student.prompts.student(p) for p in problems],
                                        [student.prompts.solution(p) for p in problems], parameters, cost)
        assert probe is not None
        right = student.nll_gradient(probe.prompts, probe.completions, parameters, cost)
        if self.alignment_probe == "style" or not probe.wrong_completions:
            return right
        wrong = student.nll_gradient(probe.wrong_prompts, probe.wrong_completions, parameters, cost)
        return [r - w for r, w in zip(right, wrong)]

    def perturbed(self, step: int, spans: list[slice], step_loss: Callable[[slice], DivergenceOutput],
                  completions: list[list[int]], scale: float, cost: StepCost) -> None:
        """Before update `step`: û (refreshed every `alignment_refresh` steps and at every checkpoint's step),
        and each problem's loss at w + εû, kept for `credits`. `step_loss` is the recipe's own loss of a
        micro-batch (`spans`), the one the update takes, so the credit measures the objective being trained."""
        module = self.student.module
        parameters = [p for p in module.parameters() if p.requires_grad]
        if self.direction is None or step % self.refresh == 0 or step % self.checkpoint_every == 0:
            gradient = self.probe_gradient(parameters, cost)
            self.direction, self.norm = unit(without_padding_rows(module, parameters, gradient))

        def losses() -> list[float]:
            return [loss for span in spans
                    for loss in problem_losses(step_loss(span).per_token_loss, completions[span], scale)]

        self.plus = losses_along(parameters, self.direction, losses, self.epsilon)

    def credits(self, per_token_loss: torch.Tensor, completions: list[list[int]], scale: float,
                alphas: list[float]) -> tuple[list[float], dict[str, Any]]:
        """After the update: each problem's credit c_i from its loss in the update's own forward
        (`per_token_loss`, at the weights `perturbed` started from), and the step's record: ``alignment`` and
        ``problem_alpha`` (per problem), their mean, the within-step slope of c on α, and ‖∇ ℓ_probe‖."""
        base = problem_losses(per_token_loss, completions, scale)
        credits = [(plus - at) / self.epsilon for plus, at in zip(self.plus, base)]
        return credits, {"alignment": credits, "problem_alpha": list(alphas), "alignment_mean": fmean(credits),
                         "alignment_slope": within_step_slope(alphas, credits), "probe_grad_norm": self.norm}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"style_probe": self.probe.state_dict() if self.probe else None, "last_style_nll": self.last_style_nll}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        probe = state.get("style_probe")
        self.probe = StyleProbe(probe["prompts"], probe["completions"], probe.get("wrong_prompts", []),
                                probe.get("wrong_completions", [])) if probe else None
        self.last_style_nll = state.get("last_style_nll")
