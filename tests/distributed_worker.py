"""Run by test_distributed.py under ``accelerate launch`` with 2 CPU processes: trains with an exposure policy
whose own answer differs per process, and writes what each process saw to ``<out>/rank<r>.json`` and its
trained weights to ``<out>/rank<r>.safetensors``.

    python distributed_worker.py CONFIG OUT_DIR [--resume]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import atesd.train.trainer as trainer_module
from atesd.config import load_config
from atesd.train.trainer import Trainer


class PerProcessExposure:
    """Answers differently on every process, so the trainer must broadcast the main process's decision."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.observed: list[dict] = []

    def alpha(self, step: int) -> float:
        return (0.25, 0.5, 0.75)[step % 3] if self.rank == 0 else 1.0

    def observe(self, step: int, stats: dict) -> None:
        self.observed.append({k: v for k, v in stats.items() if not k.endswith("_time")})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def main(config_path: str, out_dir: str, resume: bool) -> None:
    torch.set_num_threads(1)
    config = load_config(config_path)
    policies: list[PerProcessExposure] = []
    local: list[dict] = []

    def build_policy(_config):
        from accelerate import PartialState

        policies.append(PerProcessExposure(PartialState().process_index))
        return policies[-1]

    trainer_module.build_exposure_policy = build_policy
    original_step_record = Trainer._step_record

    def step_record(self, alpha, rollouts, correct, scores, *args):
        # What this process measured before the statistics are combined across processes.
        local.append({"alpha": alpha, "kl_sum": float(scores.per_token_kl.sum()),
                      "tokens": int(scores.per_token_kl.numel()), "correct": sum(correct), "count": len(correct),
                      "prompts": [list(p) for p in rollouts.prompt_ids]})
        return original_step_record(self, alpha, rollouts, correct, scores, *args)

    Trainer._step_record = step_record
    trainer = Trainer(config, resume=resume)
    trainer.train()
    rank = trainer.accelerator.process_index
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(trainer.trainable_state(), str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": trainer.accelerator.num_processes, "observed": policies[0].observed, "local": local}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--resume" in sys.argv[3:])
