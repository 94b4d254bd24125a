"""The problems a run trains on, its held-out probe set, the seeded order it visits them in, and the seeds of
each step's randomness.

Both the order and the seeds are functions of (run seed, step, process) alone, so a run resumed at step s
samples exactly what an uninterrupted run samples at step s.
"""

from __future__ import annotations

import numpy as np

from atesd.config import Config
from atesd.data.arithmetic import embedded_splits
from atesd.data.problem import Problem
from atesd.data.sources import hold_out_probe, load_problems
from atesd.eval.grading import check_answer_parses


def training_problems(config: Config) -> tuple[list[Problem], list[Problem]]:
    """(train, probe): the probe problems are held out of training (docs/method.md#statistics)."""
    if config.data.train == "embedded":
        splits = embedded_splits(config.data.task, config.data.probe_size)
        return splits["train"], splits["probe"]
    # Every answer must parse: one the grader could never match would make a problem that no rollout can solve.
    problems = load_problems(config.data.train, config.data.train_split, config.data.columns,
                             skip_invalid=config.data.skip_invalid_rows, check_answer=check_answer_parses)
    return hold_out_probe(problems, config.data.probe_size, seed=config.data.probe_seed, source=config.data.train)


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from (run seed, step, process), independent of anything sampled before."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class EpochOrder:
    """Problem indices in a fresh seeded permutation per epoch; the order is a function of the step alone,
    so resuming at step s continues exactly where an uninterrupted run would be."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._epoch, self._permutation = -1, np.arange(0)

    def batch(self, step: int) -> list[int]:
        indices = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.size)
            if epoch != self._epoch:
                self._epoch = epoch
                self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            indices.append(int(self._permutation[offset]))
        return indices

    def local_batch(self, step: int, process_index: int, process_count: int) -> list[int]:
        """This process's share of the step's problems (every `process_count`-th, from `process_index`)."""
        return self.batch(step)[process_index::process_count]
