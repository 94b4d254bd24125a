"""Which weights the teacher scores with: the starting weights, the live student, or a moving average.

- ``initial``: the weights the run started from, frozen. With a LoRA (peft) model this is the base model
  with the adapter disabled, so no copy is made; with full fine-tuning it is a frozen copy.
- ``live``: the student's current weights, without gradients.
- ``ema``: a frozen copy updated after every optimizer step, ``ema = d * ema + (1 - d) * student``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Literal

import torch

from atesd.models.causal_lm import CausalLM
from atesd.models.export import is_peft_model

WeightsKind = Literal["initial", "live", "ema"]


class TeacherWeights:
    """Gives the module to run the teacher forward with, for the configured kind of weights (the recipe's `Teacher`
    adds what it is shown: `atesd.train.forwards`)."""

    def __init__(self, student: CausalLM, weights: WeightsKind, ema_decay: float = 0.99) -> None:
        self.student = student
        self.weights = weights
        self.ema_decay = ema_decay
        self.copy: CausalLM | None = None
        if weights == "ema" or (weights == "initial" and not is_peft_model(student)):
            self.copy = copy.deepcopy(student).eval()
            self.copy.requires_grad_(False)

    @contextlib.contextmanager
    def scoring(self) -> Iterator[CausalLM]:
        """A context in which the yielded module computes teacher outputs (no gradients, eval mode)."""
        if self.copy is not None:
            with torch.no_grad():
                yield self.copy
            return
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                if self.weights == "initial":  # LoRA: the base weights are the initial ones
                    assert is_peft_model(self.student)  # else the initial weights are a copy
                    with self.student.disable_adapter():
                        yield self.student
                else:
                    yield self.student
        finally:
            self.student.train(was_training)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Move the EMA teacher towards the student (a no-op for the other kinds)."""
        if self.weights != "ema" or self.copy is None:
            return
        for teacher_param, student_param in zip(self.copy.parameters(), self.student.parameters()):
            teacher_param.lerp_(student_param.detach().to(teacher_param.dtype), 1.0 - self.ema_decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep: the EMA weights (the initial copy is re-made from the base model)."""
        if self.weights == "ema" and self.copy is not None:
            return {k: v.detach().clone() for k, v in self.copy.state_dict().items()}
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.weights == "ema" and self.copy is not None and state:
            self.copy.load_state_dict(state)
