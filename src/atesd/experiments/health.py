"""The health check of the embedded base model: is it a usable testbed (docs/method.md#embedded-testbed)?

Self-distillation needs a student that is partly competent and a teacher, the same model reading the reference,
that clearly beats it. After every warm start the student and the teacher at α = 1 are evaluated on held-out
problems of their own split (``health``, disjoint from train, probe and test); a model outside the band
(`model.embedded.health_student_range`, `model.embedded.health_min_gap`) is refused with the figures and what
to do, never trained on silently. The verdict is kept beside the cached model (``health.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.config import Config, ConfigError
from atesd.data.arithmetic import embedded_splits
from atesd.eval.evaluate import evaluate
from atesd.eval.metrics import summarize
from atesd.eval.runner import evaluation_parts
from atesd.files import atomic_write_text

HEALTH_FILE = "health.json"


class UnhealthyBaseModelError(ConfigError):
    """The warm-started base model is outside the band a testbed needs."""


@dataclass(frozen=True)
class HealthReport:
    student: float  # Average@k of the student prompt
    teacher: float  # Average@k of the teacher prompt at α = 1
    problems: int
    samples: int
    student_range: tuple[float, float]
    min_gap: float

    @property
    def gap(self) -> float:
        return self.teacher - self.student

    @property
    def problems_found(self) -> list[str]:
        low, high = self.student_range
        found = []
        if not low <= self.student <= high:
            found.append(f"the student's {self.student:.1%} is outside [{low:.0%}, {high:.0%}]")
        if self.gap < self.min_gap:
            found.append(f"the teacher's lead of {self.gap:+.1%} is below {self.min_gap:.0%}")
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems_found

    def summary(self) -> str:
        verdict = "healthy" if self.healthy else "OUT OF BAND: " + "; ".join(self.problems_found)
        return (f"base model health ({self.problems} held-out problems x {self.samples}): student {self.student:.1%}, "
                f"teacher at alpha=1 {self.teacher:.1%} (gap {self.gap:+.1%}): {verdict}")

    def matches(self, config: Config) -> bool:
        settings = config.model.embedded
        return (self.problems, self.samples, tuple(self.student_range), self.min_gap) == (
            settings.health_problems, settings.health_samples, tuple(settings.health_student_range),
            settings.health_min_gap)


def check_health(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> HealthReport:
    """Student and teacher (α = 1) accuracy on the health split, with the eval settings' sampling."""
    settings = config.model.embedded
    student = heldout_accuracy(config, model, tokenizer, settings.health_samples)
    teacher = heldout_accuracy(config, model, tokenizer, settings.health_samples, teacher_alpha=1.0)
    return HealthReport(student, teacher, settings.health_problems, settings.health_samples,
                        settings.health_student_range, settings.health_min_gap)


def heldout_accuracy(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, samples: int,
                     teacher_alpha: float | None = None) -> float:
    """Average@`samples` of the student prompt (or the teacher prompt at `teacher_alpha`) on the health split."""
    settings = config.model.embedded
    problems = embedded_splits(config.data.task, config.data.probe_size, settings.health_problems)["health"]
    prompts, engine, sampling = evaluation_parts(config, model, tokenizer)
    prompt_ids = prompts.student if teacher_alpha is None else (lambda p: prompts.teacher(p, teacher_alpha))
    was_training = model.training
    model.eval()
    # decode gives one sequence's text (transformers annotates it str | list[str], for batches too)
    results = evaluate(problems, prompt_ids, engine,
                       lambda ids: cast(str, tokenizer.decode(ids, skip_special_tokens=True)),
                       sampling, samples, seed=settings.seed, batch_size=config.eval.batch_size,
                       description="held-out accuracy")
    model.train(was_training)
    return summarize(results, samples)[f"average@{samples}"]


def save_health(report: HealthReport, model_dir: Path) -> None:
    atomic_write_text(model_dir / HEALTH_FILE, json.dumps(asdict(report), indent=1))


def load_health(model_dir: Path) -> HealthReport | None:
    path = model_dir / HEALTH_FILE
    if not path.is_file():
        return None
    fields = json.loads(path.read_text())
    return HealthReport(**{**fields, "student_range": tuple(fields["student_range"])})


def refuse_unhealthy(report: HealthReport, model_dir: Path) -> None:
    if report.healthy:
        return
    raise UnhealthyBaseModelError(
        f"the embedded base model in {model_dir} is not a usable testbed: {'; '.join(report.problems_found)} "
        f"(student {report.student:.1%}, teacher at alpha=1 {report.teacher:.1%}, on {report.problems} held-out "
        "problems). Warm-start another one (model.embedded.seed=N, or more model.embedded.warm_start_steps), "
        "or set model.embedded.health_check=false to use it anyway")
