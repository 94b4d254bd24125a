"""`atesd diagnose` on our exposure signals: every figure of the new rows equals an independent recomputation from
metrics.jsonl (numpy's polyfit, quantile and lstsq, written out here apart from atesd), and a known within-step
slope of the alignment credit is recovered while a step effect 100 times larger cancels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from atesd.cli import main
from atesd.config import load_config, save_config

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = REPO_ROOT / "configs" / "embedded" / "opsd.yaml"
GAMMA, LOOKAHEAD, HOLD = 0.9, 3, 2


def _run(directory: Path, seed: int, steps: int, *, per_problem: bool) -> Path:
    """A run's logs: probe and style NLLs that drift down with noise, and each of 8 problems' alignment credit
    c_i = 0.3 · α_i + a step effect (sd 30) + noise (sd 0.1). Batch-level runs hold one α for H = 2 updates."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    overrides = ["exposure.policy=random", f"exposure.hold_steps={HOLD}", f"exposure.controller.lookahead={LOOKAHEAD}",
                 "exposure.controller.credit=alignment", "exposure.controller.progress_signal=style_nll",
                 f"train.steps={steps}", *(["exposure.per_problem=true"] if per_problem else [])]
    save_config(load_config(EMBEDDED_CONFIG, overrides), directory / "config.yaml")
    rows, probe, style, alpha = [], 3.0, 2.0, 0.5
    for step in range(1, steps + 1):
        if per_problem or step % HOLD == 1:
            alpha = float(rng.uniform(0.05, 1.0))
        alphas = rng.uniform(0.05, 1.0, 8).tolist() if per_problem else [alpha] * 8
        shift = float(rng.normal(0, 30))
        credits = [0.3 * a + shift + float(rng.normal(0, 0.1)) for a in alphas]
        before = (probe, style)
        probe -= 0.01 + float(rng.normal(0, 0.02))
        style -= 0.02 * alpha + float(rng.normal(0, 0.005))
        rows.append({"step": step, "alpha": float(np.mean(alphas)), "probe_nll_before": before[0],
                     "probe_nll": probe, "style_nll_before": before[1], "style_nll": style,
                     "teacher_ref_logp": -1.0, "rollout_accuracy": float(rng.uniform()),
                     "problem_alpha": alphas, "alignment": credits, "alignment_mean": float(np.mean(credits))})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def _fit(points: list[tuple[object, float, float, float]], with_progress: bool) -> dict[str, float]:
    """OLS of value on α (and t/T) with one 0/1 column per group; points are (group, α, t/T, value)."""
    groups = list(dict.fromkeys(group for group, *_ in points))
    x = np.array([[alpha, *([progress] if with_progress else []), *(float(group == g) for g in groups)]
                  for group, alpha, progress, _ in points])
    y = np.array([value for *_, value in points])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    se = math.sqrt(residual @ residual / (len(y) - x.shape[1]) * np.linalg.inv(x.T @ x)[0, 0])
    return {"n": len(y), "slope": beta[0], "se": se, "t": beta[0] / se}


def _recompute_windows(runs: list[Path], steps: int) -> dict[str, dict[str, float]]:
    points: dict[str, list] = {}
    for index, run in enumerate(runs):
        rows = {row["step"]: row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
        raw: dict[str, list[float]] = {"probe": [], "style": []}
        for start in range(1, steps - LOOKAHEAD + 2, HOLD):
            span = [rows[start + i] for i in range(LOOKAHEAD)]
            values = {}
            for name in ("probe", "style"):
                losses = [span[0][f"{name}_nll_before"]] + [row[f"{name}_nll"] for row in span]
                values[f"{name}_tscl"] = -np.polyfit(np.arange(len(losses)), losses, 1)[0]
                values[f"{name}_alp"] = abs(losses[0] - losses[-1])
                signed = sum(GAMMA**i * (losses[i] - losses[i + 1]) for i in range(LOOKAHEAD))
                history = raw[name]
                if len(history) >= 2 and np.quantile(history, 0.8) > np.quantile(history, 0.2):
                    low, high = np.quantile(history, [0.2, 0.8])
                    values[f"{name}_quantile"] = float(np.clip(2 * (signed - low) / (high - low) - 1, -1, 1))
                history.append(signed)
            values["style_drop"] = span[0]["style_nll_before"] - span[-1]["style_nll"]
            values["alignment_window"] = np.mean([row["alignment_mean"] for row in span[:HOLD]])
            for term, value in values.items():
                points.setdefault(term, []).append((index, span[0]["alpha"], (start - 1) / steps, value))
    return {term: _fit(chosen, with_progress=True) for term, chosen in points.items()}


def test_the_new_window_rows_equal_a_recomputation_from_metrics(tmp_path):
    runs = [_run(tmp_path / f"run{seed}", seed, 60, per_problem=False) for seed in range(2)]
    assert main(["diagnose", *map(str, runs), "--out", str(tmp_path / "out")]) == 0
    fits = {row["signal"]: row for row in json.loads((tmp_path / "out/diagnose.json").read_text())["fits"]
            if row["table"] == "windows"}
    expected = _recompute_windows(runs, 60)
    assert fits["probe_quantile"]["n"] == 2 * (29 - 2)  # the first two windows of a run have no history
    for term, figures in expected.items():
        for key, value in figures.items():
            assert fits[term][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (term, key)
    assert fits["style_tscl"]["t"] > 2  # the style probe falls faster at higher α: seen by its slope
    # the controller's G_lp reads the run's own ℓ, here the style probe's
    assert fits["G_lp"]["mean"] > 0 and "style_lp_signed" in fits


def test_each_problems_alignment_credit_equals_a_recomputation_and_its_slope_is_found(tmp_path, capsys):
    runs = [_run(tmp_path / f"pp{seed}", seed, 40, per_problem=True) for seed in range(2)]
    assert main(["diagnose", *map(str, runs), "--out", str(tmp_path / "out")]) == 0
    assert "### Each problem's alignment credit on its own α" in capsys.readouterr().out
    fits = {row["table"]: row for row in json.loads((tmp_path / "out/diagnose.json").read_text())["fits"]
            if row["signal"] == "alignment"}
    points = []
    for index, run in enumerate(runs):
        for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
            points += [((index, row["step"]), a, (row["step"] - 1) / 40, c)
                       for a, c in zip(row["problem_alpha"], row["alignment"])]
    within = _fit(points, with_progress=False)
    by_run = _fit([(group[0], a, p, c) for group, a, p, c in points], with_progress=True)
    for table, expected in (("alignment_within_step", within), ("alignment", by_run)):
        for key, value in expected.items():
            assert fits[table][key] == pytest.approx(value, rel=1e-9), (table, key)
    assert within["n"] == 2 * 40 * 8 and abs(within["slope"] - 0.3) < 3 * within["se"] and within["t"] > 10
    assert abs(by_run["t"]) < 4  # between steps, the step effect (sd 30) drowns the same slope
    assert fits["alignment_within_step"]["needed_for_t2"] == pytest.approx(within["n"] * (2 / within["t"]) ** 2)
