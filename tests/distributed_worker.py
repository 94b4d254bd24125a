"""Run by test_distributed.py under ``accelerate launch`` with 2 CPU processes: trains with the run's real
exposure policy (the ATESD controller) wrapped so that on processes other than the main one it answers α = 1,
and writes what each process saw to ``<out>/rank<r>.json`` and its trained weights to
``<out>/rank<r>.safetensors``.

    python distributed_worker.py CONFIG OUT_DIR [--resume] [--grade-by-length]

``--grade-by-length`` replaces the grader with one that calls even-length completions right, so that the tiny,
barely trained model's GRPO groups have mixed rewards to learn from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

import atesd.experiments  # noqa: F401  (registers the embedded testbed's model)
from atesd.config import load_config
from atesd.exposure import build_exposure_policy
from atesd.train.recipe import Trainer


class RecordingExposure:
    """The real policy on the main process; elsewhere its answer is 1.0, so the trainer must broadcast the main
    process's decision. Records how often it was asked and the statistics it observed."""

    def __init__(self, policy, rank: int) -> None:
        self.policy, self.rank = policy, rank
        self.uses_teacher_ref_logp = policy.uses_teacher_ref_logp
        self.single_process = policy.single_process
        self.asked = 0
        self.observed: list[dict] = []

    def alphas(self, step: int, views) -> list[float]:
        self.asked += 1
        return self.policy.alphas(step, views) if self.rank == 0 else [1.0] * len(views)

    def nll_wanted(self, step: int) -> list[int]:
        return self.policy.nll_wanted(step)

    def measured(self, step: int, nll, teacher_logps) -> None:
        self.policy.measured(step, nll, teacher_logps)

    def hinted_wanted(self, step: int) -> list[tuple[int, float]]:
        return self.policy.hinted_wanted(step)

    def relied(self, step: int, nll) -> None:
        self.policy.relied(step, nll)

    def aligned(self, step: int, credits) -> None:
        self.policy.aligned(step, credits)

    def observe(self, step: int, stats: dict) -> dict:
        self.observed.append({k: v for k, v in stats.items() if not k.endswith("_time")})
        return self.policy.observe(step, stats)

    def drain_decisions(self) -> list[dict]:
        return self.policy.drain_decisions()

    def pending_decisions(self) -> list[dict]:
        return self.policy.pending_decisions()

    def state_dict(self) -> dict:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state)


class GradeByLength:
    def __init__(self, text: str, answer: str) -> None:
        self.correct = len(text) % 2 == 0


def main(config_path: str, out_dir: str, resume: bool, grade_by_length: bool) -> None:
    torch.set_num_threads(1)
    config = load_config(config_path)
    accelerator = Accelerator()  # first: it reads the launcher's CPU setting (ACCELERATE_USE_CPU)
    policy = RecordingExposure(build_exposure_policy(config.exposure, config.train.steps, config.run.seed),
                               accelerator.process_index)
    local: list[dict] = []

    def record_local(record: dict, measured: dict) -> None:
        """What this process measured before the statistics were combined across processes."""
        entry = {"correct": sum(measured["correct"]), "count": len(measured["correct"]),
                 "prompts": [list(p) for p in measured["prompts"]]}
        if "alpha" in record:
            kl = measured["per_token_kl"]
            entry.update(alpha=record["alpha"], kl_sum=float(kl.sum()), kl=kl.tolist(), tokens=int(kl.numel()))
        local.append(entry)

    seams = {"grader": GradeByLength} if grade_by_length else {}
    trainer = Trainer(config, resume=resume, accelerator=accelerator, exposure_policy=policy,
                      on_local_step=record_local, **seams)
    trainer.train()
    rank = trainer.accelerator.process_index
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(trainer.trainable_state(), str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": trainer.accelerator.num_processes, "asked": policy.asked, "observed": policy.observed,
        "local": local}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--resume" in sys.argv[3:], "--grade-by-length" in sys.argv[3:])
