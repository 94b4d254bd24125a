"""Settings that run but cannot learn, said before the first step (docs/reliability.md#settings-that-cannot-learn).

Values no run can learn with (a learning rate below float32's resolution, a clip norm under AdamW's epsilon, a
loss temperature that makes distributions one-hot or uniform) are refused by the config itself. What remains
here are combinations that are legitimate in a smoke test but learn nothing in a real run, so they are warned
about, not refused: a learned exposure controller whose run ends before its first update.
"""

from __future__ import annotations

from atesd.config import Config


def first_controller_update(config: Config) -> int:
    """The steps after which the per-step controller has B rewarded decisions, so can first learn: its B-th
    decision is taken at step (B − 1)·H and rewarded L updates later."""
    controller = config.exposure.controller
    return (controller.decisions_per_update - 1) * config.exposure.hold_steps + controller.lookahead


def learning_warnings(config: Config) -> list[str]:
    """One line for each setting of `config` that makes part of the run learn nothing."""
    warnings = []
    exposure = config.exposure
    if exposure.policy == "controller" and not exposure.per_problem:
        first = first_controller_update(config)
        if config.train.steps < first:
            warnings.append(
                f"the exposure controller first learns after {first} steps ((decisions_per_update - 1) x "
                f"hold_steps + lookahead) and train.steps is {config.train.steps}: it will only sample from its "
                "initial policy; lower exposure.hold_steps or exposure.controller.decisions_per_update, or train "
                "longer")
    return warnings
