"""Confidence intervals for an experiment over base models × seeds, and the verdicts read from them.

The unit of replication is a *pair*: one base model (a warm-start seed of the embedded model, or the one base
model of a real run) and one training seed. Two methods run on the same pair share the base model, the data
order and the evaluation seed, so their difference on that pair cancels what the pair alone decides (a base
model that is easy to improve, a lucky evaluation draw). A method's difference to a reference is therefore
taken pair by pair, and its 95 % interval is Student's t over the pairs (`scipy.stats.t`): the mean difference
± t(0.975, n − 1) · s / √n. That interval speaks for *these* base models with new training seeds: it treats
the pairs as independent, and pairs that share a base model are not quite.

A re-trial on another machine draws other base models too. `over_base_models` is the interval for that: the
t-interval over the base models' own mean differences (`base_model_differences`), B − 1 degrees of freedom for
B base models — exact for a balanced design when base models vary at random, and wide with few of them (with 3,
t = 4.30): a claim passes it only when its effect is large against how much it varies from one base model to
the next. The report reads every claim both ways.

A claim ("A beats B") is read from the interval of A − B: **held** when the interval lies above 0, **did not
hold** when it lies below 0, **inconclusive** when it contains 0 (no difference this experiment could detect,
at its power).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

Pair = tuple[int | None, int]  # (base model, training seed): `runs.RunSpec.pair`
CONFIDENCE = 0.95
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t-interval over `n` values; `wins` counts the values above 0 (for differences)."""

    mean: float
    low: float
    high: float
    n: int
    wins: int = 0

    @property
    def verdict(self) -> str:
        """Of the claim that the mean is above 0."""
        if self.n < 2 or math.isnan(self.low):
            return INCONCLUSIVE
        if self.low > 0:
            return HELD
        return NOT_HELD if self.high < 0 else INCONCLUSIVE

    def cell(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+1.2 [−0.3, +2.7]`` (scaled, e.g. to percentage points)."""
        if self.n < 2:
            return f"{scale * self.mean:+.{digits}f}"
        return f"{scale * self.mean:+.{digits}f} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]"


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` with its t-interval (a single value has no interval: low = high = nan)."""
    if not values:
        raise ValueError("an interval needs at least one value")
    mean = statistics.fmean(values)
    wins = sum(value > 0 for value in values)
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan, 1, wins)
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values), wins)


def paired_difference(values: Mapping[Pair, float], reference: Mapping[Pair, float],
                      confidence: float = CONFIDENCE) -> Interval | None:
    """`values` − `reference` on the pairs both have, as a t-interval over those pairs; None when none is shared."""
    shared = [pair for pair in values if pair in reference]
    if not shared:
        return None
    return mean_interval([values[pair] - reference[pair] for pair in shared], confidence)


def combined_verdict(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons: held when each held, did not hold when one did not."""
    if verdicts and all(verdict == HELD for verdict in verdicts):
        return HELD
    return NOT_HELD if NOT_HELD in verdicts else INCONCLUSIVE


def base_model_means(values: Mapping[Pair, float]) -> dict[int | None, float]:
    """`values` (``{(base model, seed): value}``) averaged within each base model, in the order the base models
    first appear."""
    grouped: dict[int | None, list[float]] = {}
    for pair, value in values.items():
        grouped.setdefault(pair[0], []).append(value)
    return {base: statistics.fmean(group) for base, group in grouped.items()}


def base_model_differences(values: Mapping[Pair, float],
                           reference: Mapping[Pair, float]) -> dict[int | None, float]:
    """`values` − `reference` averaged within each base model over the pairs both have."""
    return base_model_means({pair: values[pair] - reference[pair] for pair in values if pair in reference})


def over_base_models(by_base_model: Mapping[int | None, float], confidence: float = CONFIDENCE) -> Interval:
    """The t-interval over the base models' means (`base_model_means`, `base_model_differences`): what another
    draw of base models would see; with a single base model there is none (n = 1, inconclusive)."""
    return mean_interval(list(by_base_model.values()), confidence)


def agreeing(by_base_model: Mapping[int | None, float], mean: float) -> int:
    """How many base models' mean differences have the sign of the overall `mean`."""
    return sum((difference > 0) == (mean > 0) and difference != 0 for difference in by_base_model.values())


@dataclass(frozen=True)
class PairedComparison:
    """A method against a reference, read both ways: over the pairs and over the base models' means."""

    pairs: Interval
    by_base_model: dict[int | None, float]
    base_models: Interval

    @property
    def agreeing(self) -> int:
        return agreeing(self.by_base_model, self.pairs.mean)

    @property
    def note(self) -> str:
        """``(5/9; 2/3 base models)``: the pairs won, and the base models that agree in sign."""
        return f"({self.pairs.wins}/{self.pairs.n}{agreement_note(self.agreeing, len(self.by_base_model))})"


def paired_comparison(values: Mapping[Pair, float], reference: Mapping[Pair, float],
                      confidence: float = CONFIDENCE) -> PairedComparison | None:
    """`values` − `reference` over the pairs both have and over their base models; None when none is shared."""
    difference = paired_difference(values, reference, confidence)
    if difference is None:
        return None
    by_base = base_model_differences(values, reference)
    return PairedComparison(difference, by_base, over_base_models(by_base, confidence))


def agreement_note(agree: int, base_models: int) -> str:
    """``; 2/3 base models`` after a difference's pairs won, or nothing with a single base model: the report's
    cells and the claims' evidence say it alike."""
    return f"; {agree}/{base_models} base models" if base_models > 1 else ""
