"""Settings that run but cannot learn, said before the first step (docs/reliability.md#settings-that-cannot-learn).

Values no run can learn with (a learning rate below float32's resolution, a clip norm under AdamW's epsilon, a
loss temperature that makes distributions one-hot or uniform) are refused by the config itself. What remains
here are combinations that are legitimate in a smoke test but learn nothing in a real run, or act on chance, so they
are warned about, not refused: a learned exposure controller whose run ends before its first update, the mismatch
ladder's accuracy guard reading means too noisy for its drop.
"""

from __future__ import annotations

from atesd.config import Config


def learning_warnings(config: Config) -> list[str]:
    """One line for each setting of `config` that makes part of the run learn nothing or act on chance (today: an
    exposure policy's, e.g. a learned controller whose run ends before its first update)."""
    # one rollout a prompt: exposure policies other than fixed run only with the distillation methods
    return config.exposure.warnings(config.train.steps, config.train.batch_size)
