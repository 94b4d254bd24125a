"""The diagnosis of our exposure signals (docs/controller.md#signals-with-power): each window's curriculum-learning
estimators over the probe NLL and the style probe NLL, the alignment of the decision's updates, and each
problem's alignment credit on its own α, all rebuilt from metrics.jsonl with `atesd.exposure.signals`.

A window (`diagnose.run_windows`) starts at a decision's first update, row ``step``, and spans rows
step … step+L−1; its series of a probe is ℓ_{t0} = ``<probe>_before`` of row step, then ``<probe>`` of each row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from atesd.exposure.signals import absolute_progress, quantile_rescaled, signed_progress, window_slope

# The probes a run may log, by the prefix of their rows' names: metrics.jsonl key → label.
SERIES = {"probe": ("probe_nll", "probe NLL"), "style": ("style_nll", "style NLL")}
# Our window signals (rows of the windows' table after the controller's): name → label. A row no run logged
# anything for is left out of the table.
EXTRA_SIGNALS = {
    "style_drop": "style NLL drop",
    "style_lp_signed": "style NLL signed drops (discounted)",
    **{f"{series}_{kind}": f"{label} {what}" for series, (_, label) in SERIES.items()
       for kind, what in (("tscl", "TSCL slope"), ("alp", "ALP |drop|"),
                          ("quantile", "signed drops, quantile-rescaled"))},
    "alignment_window": "alignment (mean over the hold)",
}
EXTRA_NEEDS = {name: ("style_nll at every step (exposure.controller.progress_signal=style_nll)"
                      if name.startswith("style") else "alignment at every step (exposure.controller.credit=alignment)"
                      if name.startswith("alignment") else "the probe NLL at every step") for name in EXTRA_SIGNALS}
# Each problem's alignment credit on its own α (random exposure per problem, or the alignment credit).
ALIGNMENT_SIGNALS = {"alignment": "alignment credit c_i", "alignment_sign": "sign of c_i (robust to its heavy tails)"}


def number(row: Mapping[str, Any] | None, key: str) -> float:
    value = None if row is None else row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def series(span: Sequence[Mapping[str, Any] | None], key: str) -> list[float]:
    """ℓ_{t0}, …, ℓ_{t0+L} of the probe logged as `key` over the window's rows `span`."""
    return [number(span[0], f"{key}_before"), *(number(row, key) for row in span)]


def window_signals(span: Sequence[Mapping[str, Any] | None], hold: int, discount: float) -> dict[str, float]:
    """Our signals of one window (`EXTRA_SIGNALS`, the quantile-rescaled ones still raw: `rescale_by_history`)."""
    values = dict.fromkeys(EXTRA_SIGNALS, math.nan)
    for name, (key, _) in SERIES.items():
        losses = series(span, key)
        values[f"{name}_tscl"] = window_slope(losses)
        values[f"{name}_alp"] = absolute_progress(losses)
        values[f"{name}_quantile"] = signed_progress(losses, discount)
    style = series(span, "style_nll")
    values["style_drop"] = style[0] - style[-1]
    values["style_lp_signed"] = signed_progress(style, discount)
    values["alignment_window"] = fmean(number(row, "alignment_mean") for row in span[:hold])
    return values


def rescale_by_history(windows: Sequence[dict[str, float]]) -> None:
    """Graves et al.'s rescaling, in place, of each window's ``*_quantile`` value by the 20th and 80th percentiles
    of the raw values of the run's earlier windows (`windows` in the run's order)."""
    for name in SERIES:
        key = f"{name}_quantile"
        raw = [values[key] for values in windows]
        for index, values in enumerate(windows):
            values[key] = quantile_rescaled(raw[index], raw[:index])


def alignment_rows(metrics: Sequence[Mapping[str, Any]]) -> list[tuple[int, list[float], list[float]]]:
    """(step, each problem's α, each problem's alignment credit) of every row that logged them."""
    found = []
    for row in metrics:
        alphas, credits = row.get("problem_alpha"), row.get("alignment")
        if isinstance(alphas, list) and isinstance(credits, list) and len(alphas) == len(credits):
            found.append((row["step"], [math.nan if a is None else float(a) for a in alphas],
                          [math.nan if c is None else float(c) for c in credits]))
    return found
