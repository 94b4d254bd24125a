"""The paper's claims (docs/method.md#paper-recipes), each read from paired intervals of a comparison.

Every claim is a set of comparisons "A beats B", each the paired difference A − B over base models × seeds
with its 95 % t-interval (`atesd.experiments.paired`); a claim is held when each of its comparisons held, did not
hold when one of them did not, and is inconclusive otherwise. Every claim is read twice: over the pairs (these
base models, new training seeds) and over the base models' means (a new draw of base models, as a re-trial on
another machine makes). A claim whose methods the comparison did not run is left out. The fixed exposures are
the comparison's ``--alphas`` runs with OPSD as α = 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from atesd.experiments.buckets import BUCKETS
from atesd.experiments.paired import (
    HELD,
    Interval,
    Pair,
    PairedComparison,
    base_model_means,
    combined_verdict,
    mean_interval,
    over_base_models,
    paired_comparison,
)

Pairs = Mapping[Pair, float]  # {(base model, seed): value}
MISMATCH_CLAIMED = ("kl_p90", "kl_p99", "top1_disagree")  # the paper's: the KL tail and top-1 disagreement
PREFERRED_ALPHA = {"easy": 1.0, "medium": 0.5}  # and hard: the lowest α


@dataclass(frozen=True)
class Claim:
    statement: str
    evidence: str
    verdict: str  # over the pairs
    base_model_evidence: str = ""  # the intervals over the base models' means ("" with a single base model)
    base_model_verdict: str | None = None


@dataclass(frozen=True)
class Comparison:
    text: str
    difference: PairedComparison


def _versus(a: str, b: str, scores: Mapping[str, Pairs]) -> Comparison | None:
    difference = paired_comparison(scores[a], scores[b]) if a in scores and b in scores else None
    if difference is None:
        return None
    return Comparison(f"{a} − {b}: {difference.pairs.cell()} {difference.note}", difference)


def _claim(statement: str, comparisons: Sequence[Comparison | None]) -> Claim | None:
    made = [c for c in comparisons if c is not None]
    if not made or len(made) < len(comparisons):
        return None
    differences = [c.difference for c in made]
    return _read_both_ways(statement, [c.text for c in made], [d.pairs.verdict for d in differences],
                           [d.base_models.cell() for d in differences], [d.base_models.verdict for d in differences],
                           several=all(d.base_models.n > 1 for d in differences))


def _read_both_ways(statement: str, texts: Sequence[str], verdicts: Sequence[str], base_texts: Sequence[str],
                    base_verdicts: Sequence[str], several: bool) -> Claim:
    """A claim from its parts' evidence and verdicts over the pairs and over the base models (those only with
    `several` base models)."""
    return Claim(statement, "; ".join(texts), combined_verdict(verdicts),
                 "; ".join(base_texts) if several else "", combined_verdict(base_verdicts) if several else None)


def best_fixed(scores: Mapping[str, Pairs], fixed: Mapping[str, float], below_one: bool = False) -> str | None:
    """The fixed-exposure label with the highest mean score (only α < 1 with `below_one`)."""
    candidates = [label for label, alpha in fixed.items() if label in scores and (alpha < 1 or not below_one)]
    return max(candidates, key=lambda label: mean_interval(list(scores[label].values())).mean, default=None)


def method_claims(scores: Mapping[str, Pairs], fixed: Mapping[str, float]) -> list[Claim]:
    """The claims about final accuracy: `scores` is ``{method: {pair: Average@k}}``."""
    best, best_below_one = best_fixed(scores, fixed), best_fixed(scores, fixed, below_one=True)
    claims = [
        _claim("full exposure is not the best fixed exposure (the best α < 1 beats α = 1)",
               [_versus(best_below_one, "opsd", scores)] if best_below_one else []),
        _claim("ATESD beats the best fixed α, which beats random exposure",
               [_versus("atesd", best, scores), _versus(best, "random", scores)] if best else []),
        _claim("delayed (discounted) credit beats immediate credit", [_versus("atesd", "atesd-immediate", scores)]),
        _claim("the teacher-grounded term helps (G_lp only is worse)", [_versus("atesd", "atesd-lp-only", scores)]),
        # the paper's "ATESD ≥ OPSD > GRPO, SFT at equal updates", one comparison a row
        _claim("ATESD ≥ OPSD at equal updates", [_versus("atesd", "opsd", scores)]),
        _claim("OPSD > GRPO at equal updates", [_versus("opsd", "grpo", scores)]),
        _claim("OPSD > SFT at equal updates", [_versus("opsd", "sft", scores)]),
        _claim("(the testbed's precondition) OPSD beats the base student", [_versus("opsd", "base", scores)]),
        _claim("(ours) the baseline against the reward's drift helps",
               [_versus("atesd", "atesd-no-drift-baseline", scores)]),
        _claim("(ours) exposure per problem beats one α per batch, and OPSD",
               [_versus("atesd-per-problem", "atesd", scores), _versus("atesd-per-problem", "opsd", scores)]),
    ]
    return [claim for claim in claims if claim is not None]


def bucket_claim(bucket_scores: Mapping[str, Mapping[str, Pairs]], fixed: Mapping[str, float]) -> Claim | None:
    """Easy problems prefer α = 1, medium 0.5, hard the lowest: in each bucket the preferred α beats every other
    fixed α. `bucket_scores` is ``{bucket: {method: {pair: Average@k in the bucket}}}``."""
    present = {label: alpha for label, alpha in fixed.items()
               if all(label in bucket_scores.get(bucket, {}) for bucket in BUCKETS)}
    if len(present) < 2:
        return None
    texts, verdicts, base_texts, base_verdicts = [], [], [], []
    for bucket in BUCKETS:
        scores = bucket_scores[bucket]
        wanted = PREFERRED_ALPHA.get(bucket, min(present.values()))
        preferred = next((label for label, alpha in present.items() if alpha == wanted), None)
        if preferred is None:
            return None
        best = best_fixed(scores, present)
        assert best is not None  # every label of `present` has scores in every bucket
        compared = [paired_comparison(scores[preferred], scores[other]) for other in present if other != preferred]
        differences = [d for d in compared if d is not None]
        if len(differences) < len(compared):
            return None
        pairs, bases = [d.pairs for d in differences], [d.base_models for d in differences]
        verdicts.append(combined_verdict([d.verdict for d in pairs]))
        base_verdicts.append(combined_verdict([d.verdict for d in bases]))
        texts.append(f"{bucket}: best α = {present[best]:g}, α = {wanted:g} against its closest rival "
                     f"{min(pairs, key=lambda d: d.mean).cell()} ({verdicts[-1]})")
        base_texts.append(f"{bucket}: {min(bases, key=lambda d: d.mean).cell()} ({base_verdicts[-1]})")
    return _read_both_ways("easy problems prefer α = 1, medium 0.5, hard the lowest α", texts, verdicts,
                           base_texts, base_verdicts, several=bases[0].n > 1)


def mismatch_claim(mismatch: Mapping[Pair, Mapping[str, Mapping[str, float]]]) -> Claim | None:
    """The mismatch rises with α: for the KL tail and top-1 disagreement, every step up in α raises it.
    `mismatch` is ``{pair: {str(α): {statistic: value}}}``, measured on the base model of each pair."""
    if not mismatch:
        return None
    alphas = sorted({float(alpha) for by_alpha in mismatch.values() for alpha in by_alpha})
    if len(alphas) < 2:
        return None
    readings = []  # per statistic: over the pairs (text, verdict), then over the base models (text, verdict)
    for statistic in MISMATCH_CLAIMED:
        rises = [{pair: by_alpha[f"{high:g}"][statistic] - by_alpha[f"{low:g}"][statistic]
                  for pair, by_alpha in mismatch.items()} for low, high in pairwise(alphas)]
        readings.append((*_steps_up(statistic, [mean_interval(list(rise.values())) for rise in rises]),
                         *_steps_up(statistic, [over_base_models(base_model_means(rise)) for rise in rises])))
    texts, verdicts, base_texts, base_verdicts = zip(*readings, strict=True)
    return _read_both_ways("the teacher–student mismatch rises monotonically with α", texts, verdicts, base_texts,
                           base_verdicts, several=len({pair[0] for pair in mismatch}) > 1)


def _steps_up(statistic: str, steps: Sequence[Interval]) -> tuple[str, str]:
    """How many of the steps up in α raise `statistic`, and the verdict that every one does."""
    verdict = combined_verdict([step.verdict for step in steps])
    held = sum(step.verdict == HELD for step in steps)
    return f"{statistic}: {held} of {len(steps)} steps up in α raise it ({verdict})", verdict
