"""One optimizer update from a step's micro-batches: accumulation, clipping, the non-finite skip, the schedule.

Every method (the distillation loss, GRPO, SFT, the embedded warm start) hands `Updater.step` its micro-batches
and a function giving each one's loss, already scaled so that the gradients add up to the step's loss. A step
whose loss or gradient is not finite on any process is skipped (the weights and the optimizer state are left
as they were) and counted; once `train.max_consecutive_bad_steps` of them came in a row, `stop_if_diverged`
(which the recipe calls after logging the step) stops the run with `NonFiniteLossError`. An applied update that
leaves a weight non-finite (a learning rate far too large) stops the run at once with `NonFiniteWeightsError`,
before anything is checkpointed. Either way the last checkpoint is intact, and a resume may lower ``train.lr``
(docs/reliability.md#resume), which `load_state_dict` then applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from atesd.config import TrainConfig
from atesd.errors import UserError
from atesd.train.distributed import Processes, local_part


class NonFiniteError(UserError, RuntimeError):
    """Non-finite numbers stopped the run; the last checkpoint is intact."""


class NonFiniteLossError(NonFiniteError):
    """Too many steps in a row produced a non-finite loss or gradient."""


class NonFiniteWeightsError(NonFiniteError):
    """An applied update made a weight non-finite."""


REMEDY = ("Lower train.lr (continue with `atesd train CONFIG --resume train.lr=<lower>`), set loss.clip, or check "
          "the data; the last checkpoint is intact")


@dataclass(frozen=True)
class UpdateResult:
    """What one update did: `applied` False means it was skipped (non-finite loss or gradient)."""

    applied: bool
    grad_norm: float
    lr: float  # the learning rate after the update's scheduler step (what the step record logs)

    def record(self, skipped_steps: int) -> dict[str, Any]:
        return {"grad_norm": self.grad_norm, "lr": self.lr, "skipped": not self.applied,
                "skipped_steps": skipped_steps}


def micro_batches(size: int, micro_batch_size: int) -> list[slice]:
    """`size` sequences in slices of at most `micro_batch_size`."""
    return [slice(start, start + micro_batch_size) for start in range(0, size, micro_batch_size)]


def precision(device: torch.device, bf16_autocast: bool):
    """The precision context of a step's forwards: bf16 autocast when `train.bf16_autocast`, else none."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast)


def lr_factor(step: int, train: TrainConfig) -> float:
    """The learning-rate multiplier at `step`: linear warm-up, then constant, linear decay or cosine."""
    warmup = min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else 1.0
    progress = min(step / max(train.steps, 1), 1.0)
    if train.lr_scheduler == "linear":
        return warmup * (1.0 - progress)
    if train.lr_scheduler == "cosine":
        return warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
    return warmup


class Updater:
    """Applies updates to `model` with `optimizer` and `scheduler` (stepped once per update, skipped or not)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LambdaLR, processes: Processes, *, max_grad_norm: float,
                 max_consecutive_bad_steps: int, bf16_autocast: bool = False) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.processes = processes
        self.max_grad_norm = max_grad_norm
        self.max_consecutive_bad_steps = max_consecutive_bad_steps
        self.bf16_autocast = bf16_autocast
        self.skipped_steps = 0
        self.consecutive_bad_steps = 0
        self.last_bad_step = 0  # 1-based, as metrics.jsonl numbers steps

    def step(self, spans: Sequence[slice], loss_of: Callable[[slice], torch.Tensor], step: int) -> UpdateResult:
        """Backward of each micro-batch's loss ``loss_of(span)``, then one clipped optimizer step (or a counted
        skip); `step` (0-based) only names the step in the errors that stop a run."""
        processes = self.processes
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        for index, span in enumerate(spans):
            last = index == len(spans) - 1
            with processes.no_sync(self.model, skip=not last), precision(processes.device, self.bf16_autocast):
                loss = loss_of(span)
                finite = finite and bool(torch.isfinite(loss))
                # Backward even for a non-finite loss: every process must join the gradient all-reduce; the
                # step is then skipped below.
                processes.backward(loss)

        finite = processes.all_agree(finite)
        grad_norm = float("nan")
        if finite:
            grad_norm = processes.clip_grad_norm(self.model.parameters(), self.max_grad_norm)
            finite = processes.all_agree(math.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.consecutive_bad_steps = 0
            if not processes.all_agree(self.weights_are_finite()):
                raise NonFiniteWeightsError(f"the update of step {step + 1} made weights non-finite (train.lr is "
                                            f"{self.scheduler.base_lrs[0]:g}); nothing of it was saved. {REMEDY}.")
        else:
            self.skipped_steps += 1
            self.consecutive_bad_steps += 1
            self.last_bad_step = step + 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return UpdateResult(applied=finite, grad_norm=grad_norm, lr=float(self.scheduler.get_last_lr()[0]))

    def weights_are_finite(self) -> bool:
        # A sum is non-finite when any of its terms is, and needs no copy of the weights; only sums over 3e38
        # would be false alarms. One number per tensor, one device synchronisation in all. Sharded, each process
        # checks its own shards (the caller combines the answers over processes).
        sums = [local_part(p.detach()).sum(dtype=torch.float32) for p in self.model.parameters() if p.requires_grad]
        return not sums or math.isfinite(float(torch.stack(sums).sum()))

    def stop_if_diverged(self) -> None:
        """Raise `NonFiniteLossError` once `max_consecutive_bad_steps` steps in a row were skipped."""
        bad = self.consecutive_bad_steps
        if bad >= self.max_consecutive_bad_steps:
            steps = f"step {self.last_bad_step}" if bad == 1 else f"steps {self.last_bad_step - bad + 1} to " \
                f"{self.last_bad_step}"
            raise NonFiniteLossError(f"{bad} steps in a row had a non-finite loss or gradient ({steps} of "
                                     f"metrics.jsonl); no update reached the weights. {REMEDY}.")

    def state_dict(self) -> dict[str, Any]:
        """The counters and the schedule (the optimizer's tensors are saved on their own)."""
        return {"skipped_steps": self.skipped_steps, "consecutive_bad_steps": self.consecutive_bad_steps,
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and the schedule, at this updater's learning rate (a resume may have lowered it:
        the optimizer's and the scheduler's saved states hold the old one)."""
        self.skipped_steps = state["skipped_steps"]
        self.consecutive_bad_steps = state["consecutive_bad_steps"]
        base_lrs = list(self.scheduler.base_lrs)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = base_lrs
        for group, base, factor in zip(self.scheduler.optimizer.param_groups, base_lrs, self.scheduler.lr_lambdas):
            group["initial_lr"], group["lr"] = base, base * factor(self.scheduler.last_epoch)
