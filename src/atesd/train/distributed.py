"""The data-parallel processes of a run, and the few collective operations the recipe needs.

Every statistic a step logs, and every number the exposure policy sees, is combined over processes first, so
that a run on N processes logs what one process would have measured on the whole batch. One process (a
warm start, a test) runs the same code with every collective a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.distributed.tensor import DTensor

from atesd.config import ConfigError

T = TypeVar("T")


class Processes:
    """This process's place among the run's processes (through `accelerate`), or a lone process; `sharded` when
    the model is sharded with FSDP2 (`atesd.train.sharding`) rather than replicated by DDP."""

    def __init__(self, accelerator: Accelerator | None = None, *, sharded: bool = False) -> None:
        self.accelerator = accelerator
        self.sharded = sharded
        self.count = accelerator.num_processes if accelerator is not None else 1
        self.index = accelerator.process_index if accelerator is not None else 0
        self.is_main = self.index == 0
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")

    def sums(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over processes (one reduce for all of them)."""
        if self.count == 1:
            return values
        assert self.accelerator is not None  # several processes: accelerate runs them
        summed = self.accelerator.reduce(torch.tensor(list(values.values()), dtype=torch.float64,
                                                      device=self.device), "sum")
        return dict(zip(values, summed.tolist()))

    def all_agree(self, flag: bool) -> bool:
        """True when `flag` is true on every process."""
        if self.count == 1:
            return flag
        assert self.accelerator is not None  # several processes: accelerate runs them
        value = torch.tensor(1.0 if flag else 0.0, device=self.device)
        return bool(self.accelerator.reduce(value, "min").item() > 0.5)

    def decided_by_main(self, decide: Callable[[], T]) -> T:
        """`decide()` run on the main process only; every process gets its result."""
        decision: list[Any] = [decide() if self.is_main else None]
        if self.count > 1:
            broadcast_object_list(decision, from_process=0)
        return decision[0]

    def gathered(self, values: torch.Tensor) -> torch.Tensor:
        """A 1-D float tensor of every process's finite-or-inf `values`, of whatever length each has: each is padded
        with NaN to the longest for the gather, and NaNs are dropped after it."""
        everything = values.float().to(self.device)
        if self.count > 1:
            assert self.accelerator is not None  # several processes: accelerate runs them
            everything = self.accelerator.gather(self.accelerator.pad_across_processes(everything,
                                                                                       pad_index=float("nan")))
        return everything[~torch.isnan(everything)]

    def loss_scale(self, local_units: int) -> float:
        """DDP averages gradients over processes; scaling each process's loss sum by count / (units of the
        whole step) turns that average into "sum over the step / number of units"
        (docs/method.md#distillation-loss), whatever the split."""
        global_units = self.sums({"units": float(local_units)})["units"]
        return self.count / max(global_units, 1.0)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def no_sync(self, model: torch.nn.Module, skip: bool):
        """Inside, gradients are not all-reduced (every micro-batch but the last); `skip` False does nothing.
        Sharded, gradients are reduce-scattered after every micro-batch all the same: holding them back would keep
        the whole model's unsharded gradients until the last one, which is the memory sharding saves."""
        if self.accelerator is None or not skip or self.sharded:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def clip_grad_norm(self, parameters, max_norm: float) -> float:
        if self.accelerator is None:
            return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        if self.sharded:  # DTensor gradients: torch's norm is over every process's shards, a DTensor to gather
            norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
            return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        return float(self.accelerator.clip_grad_norm_(parameters, max_norm))

    def wait_for_everyone(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2-sharded tensor (a DTensor); any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def refuse_unsupported_distribution(accelerator: Accelerator) -> None:
    """DDP, FSDP2 (`atesd.train.sharding`) or one process. Under DeepSpeed, `accelerator.backward` runs
    DeepSpeed's own optimizer step after every backward, which would bypass this loop's micro-batch
    accumulation, non-finite-step skipping and clipping."""
    kind = accelerator.state.distributed_type.name
    if kind == "DEEPSPEED":
        raise ConfigError(f"the accelerate config uses {kind}, which atesd's training loop does not support yet: "
                          "use configs/accelerate/ddp.yaml or fsdp.yaml (see docs/scaling.md)")
