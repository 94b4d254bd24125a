"""Exposure signals beyond the paper's reward (ours, docs/controller.md#signals-with-power), as plain functions of
numbers: estimators of learning progress from curriculum learning over a window's loss series, and the comparison
of exposures within one step.

Each takes ``losses`` = ℓ_{t0}, …, ℓ_{t0+L} (a decision's window, as `reward.learning_progress` does) or one
step's per-problem exposures and credits, and returns NaN where a value it needs is not finite.

- `signed_progress`: the discounted drops of ℓ, signed (G_lp without its max(0, ·)).
- `window_slope` (TSCL, Matiisen et al., arXiv 1707.00183): the least-squares slope of the window's points,
  negated so that a falling loss is positive progress, per update.
- `absolute_progress` (ALP-GMM, Portelas et al., arXiv 1910.07224): |ℓ_{t0} − ℓ_{t0+L}|, forgetting counting
  as much as learning.
- `quantile_rescaled` (Graves et al., arXiv 1704.03003): a reward mapped to [−1, 1] by the 20th and 80th
  percentiles of the rewards before it.
- `within_step_slope`: the least-squares slope of one step's per-problem credits on their own α, the comparison
  of exposures on a common state (the same weights, the same update).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

QUANTILES = (0.2, 0.8)  # Graves et al.'s percentiles
MIN_HISTORY = 2  # past rewards a quantile rescaling needs


def _finite(values: Sequence[float]) -> np.ndarray | None:
    array = np.asarray(values, dtype=float)
    return array if array.size and np.isfinite(array).all() else None


def signed_progress(losses: Sequence[float], discount: float) -> float:
    """Σ γ^{i-1} (ℓ_{t0+i-1} − ℓ_{t0+i}): the controller's G_lp without its max(0, ·) (NaN when a loss is not
    finite)."""
    drops = -np.diff(np.asarray(losses, dtype=float))
    return float(np.dot([discount**i for i in range(drops.size)], drops))


def window_slope(losses: Sequence[float]) -> float:
    """−(least-squares slope of ℓ_{t0+i} on i over the window's points): progress per update."""
    array = _finite(losses)
    if array is None or array.size < 2:
        return math.nan
    steps = np.arange(array.size, dtype=float)
    centred = steps - steps.mean()
    return -float(centred @ (array - array.mean()) / (centred @ centred))


def absolute_progress(losses: Sequence[float]) -> float:
    """|ℓ_{t0} − ℓ_{t0+L}|: the window's absolute learning progress."""
    return abs(float(losses[0]) - float(losses[-1])) if _finite(losses) is not None else math.nan


def quantile_rescaled(value: float, history: Sequence[float]) -> float:
    """`value` mapped linearly from [q20, q80] of the finite values of `history` onto [−1, 1], clipped outside;
    NaN with fewer than `MIN_HISTORY` past values or no spread between the two percentiles."""
    past = np.asarray([h for h in history if math.isfinite(h)], dtype=float)
    if not math.isfinite(value) or past.size < MIN_HISTORY:
        return math.nan
    low, high = np.quantile(past, QUANTILES)
    if high - low <= 0:
        return math.nan
    return float(np.clip(2 * (value - low) / (high - low) - 1, -1.0, 1.0))


def within_step_slope(alphas: Sequence[float], credits: Sequence[float]) -> float:
    """The least-squares slope of `credits` on `alphas` (one step's problems); NaN when α does not vary."""
    x, y = _finite(alphas), _finite(credits)
    if x is None or y is None or x.size != y.size or x.size < 2:
        return math.nan
    centred = x - x.mean()
    spread = float(centred @ centred)
    return float(centred @ (y - y.mean()) / spread) if spread > 1e-12 else math.nan
