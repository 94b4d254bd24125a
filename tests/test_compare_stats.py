"""The comparison's statistics: t-intervals and paired differences by hand, the paper's claims read from them
on made-up scores, and `atesd compare` over two base models with fixed exposures and two jobs end to end."""

from __future__ import annotations

import json
import math
import re
import statistics

import pytest

from atesd.cli import main
from atesd.config import load_config, save_config
from atesd.experiments.claims import best_fixed, bucket_claim, method_claims, mismatch_claim
from atesd.experiments.compare_report import claims_section
from atesd.experiments.paired import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    agreeing,
    base_model_differences,
    base_model_means,
    combined_verdict,
    mean_interval,
    over_base_models,
    paired_difference,
)
from atesd.experiments.tables import read_csv

# Two-sided 95 % t quantiles (any statistics table): 4, 2 and 1 degrees of freedom.
T95_4, T95_2, T95_1 = 2.7764451, 4.3026527, 12.7062047


def test_mean_interval_is_students_t_over_the_values():
    values = [0.1, 0.3, 0.2, 0.5, 0.4]
    interval = mean_interval(values)
    half = T95_4 * statistics.stdev(values) / math.sqrt(5)
    assert interval.mean == pytest.approx(0.3) and interval.n == 5 and interval.wins == 5
    assert (interval.low, interval.high) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    single = mean_interval([0.2])
    assert single.n == 1 and math.isnan(single.low) and single.verdict == INCONCLUSIVE
    assert single.cell() == "+20.0"
    with pytest.raises(ValueError):
        mean_interval([])


def test_paired_difference_uses_only_the_shared_pairs_and_reads_a_verdict():
    method = {(0, 0): 0.50, (0, 1): 0.52, (1, 0): 0.61, (1, 1): 0.40}
    reference = {(0, 0): 0.40, (0, 1): 0.41, (1, 0): 0.50, (2, 0): 0.99}  # (1, 1) and (2, 0) are not shared
    difference = paired_difference(method, reference)
    assert difference.n == 3 and difference.wins == 3
    assert difference.mean == pytest.approx((0.10 + 0.11 + 0.11) / 3)
    half = T95_2 * statistics.stdev([0.10, 0.11, 0.11]) / math.sqrt(3)
    assert difference.low == pytest.approx(difference.mean - half) and difference.verdict == HELD
    assert difference.cell() == (f"+{100 * difference.mean:.1f} "
                                 f"[+{100 * difference.low:.1f}, +{100 * difference.high:.1f}]")
    assert paired_difference(reference, method).verdict == NOT_HELD
    assert paired_difference({(0, 0): 0.5, (0, 1): 0.4}, {(0, 0): 0.4, (0, 1): 0.5}).verdict == INCONCLUSIVE
    assert paired_difference({(5, 5): 1.0}, reference) is None
    assert combined_verdict([HELD, HELD]) == HELD
    assert combined_verdict([HELD, INCONCLUSIVE]) == INCONCLUSIVE
    assert combined_verdict([HELD, NOT_HELD, INCONCLUSIVE]) == NOT_HELD
    assert combined_verdict([]) == INCONCLUSIVE


def test_base_model_differences_average_within_each_base_model():
    method = {(0, 0): 0.50, (0, 1): 0.52, (1, 0): 0.61, (1, 1): 0.40, (2, 0): 0.3}
    reference = {(0, 0): 0.40, (0, 1): 0.41, (1, 0): 0.50, (1, 1): 0.45}  # base model 2 is not shared
    by_base = base_model_differences(method, reference)
    assert list(by_base) == [0, 1]
    assert by_base[0] == pytest.approx((0.10 + 0.11) / 2) and by_base[1] == pytest.approx((0.11 - 0.05) / 2)
    assert agreeing(by_base, 0.05) == 2 and agreeing(by_base, -0.05) == 0
    assert agreeing({0: 0.1, 1: -0.2, 2: 0.0}, 0.01) == 1  # a zero difference agrees with neither sign


def test_over_base_models_is_t_over_the_base_models_means():
    values = {(0, 0): 0.10, (0, 1): 0.14, (0, 2): 0.12, (1, 0): 0.02, (1, 1): 0.04, (1, 2): 0.03,
              (2, 0): 0.30, (2, 1): 0.30}
    means = base_model_means(values)
    assert list(means) == [0, 1, 2] and means[0] == pytest.approx(0.12) and means[2] == pytest.approx(0.30)
    interval = over_base_models(means)
    half = T95_2 * statistics.stdev([0.12, 0.03, 0.30]) / math.sqrt(3)
    assert interval.n == 3 and interval.mean == pytest.approx(0.15)
    assert (interval.low, interval.high) == (pytest.approx(0.15 - half), pytest.approx(0.15 + half))
    # every pair above 0 decides the pairs' interval, but three base models this far apart decide nothing
    assert mean_interval(list(values.values())).verdict == HELD and interval.verdict == INCONCLUSIVE
    assert over_base_models({0: 0.2}).verdict == INCONCLUSIVE  # one base model: no interval


def _scores(means: dict[str, float], pairs: int = 4) -> dict[str, dict[tuple, float]]:
    """Per method, scores on `pairs` pairs: its mean plus a pair effect shared by every method and a small
    method-specific wobble, so that differences of 2 points or more are decided."""
    return {method: {(pair // 2, pair % 2): mean + 0.05 * pair + 0.002 * ((pair * (index + 1)) % 3)
                     for pair in range(pairs)} for index, (method, mean) in enumerate(means.items())}


def test_method_claims_follow_the_intervals():
    fixed = {"alpha-0": 0.0, "alpha-0.5": 0.5, "opsd": 1.0}
    scores = _scores({"alpha-0": 0.40, "alpha-0.5": 0.45, "opsd": 0.42, "random": 0.40, "atesd": 0.42,
                      "atesd-immediate": 0.40, "grpo": 0.30, "sft": 0.10})
    assert best_fixed(scores, fixed) == "alpha-0.5" and best_fixed(scores, {"opsd": 1.0}, below_one=True) is None
    claims = {claim.statement: claim for claim in method_claims(scores, fixed)}
    full = claims["full exposure is not the best fixed exposure (the best α < 1 beats α = 1)"]
    assert full.verdict == HELD and full.evidence.startswith("alpha-0.5 − opsd: +3.")
    assert claims["ATESD beats the best fixed α, which beats random exposure"].verdict == NOT_HELD
    assert claims["delayed (discounted) credit beats immediate credit"].verdict == HELD
    # ATESD = OPSD up to a wobble of 0.4 points: inconclusive; OPSD beats GRPO and SFT
    assert claims["ATESD ≥ OPSD at equal updates"].verdict == INCONCLUSIVE
    assert claims["OPSD > GRPO at equal updates"].verdict == claims["OPSD > SFT at equal updates"].verdict == HELD
    # the methods not run make no claim
    assert "the teacher-grounded term helps (G_lp only is worse)" not in claims
    assert not any("per problem" in statement for statement in claims)
    # over the 2 base models' means (1 degree of freedom): SFT's 32 points hold, ATESD = OPSD stays undecided
    sft = claims["OPSD > SFT at equal updates"]
    assert sft.base_model_verdict == HELD and sft.base_model_evidence.startswith("+31.9 [")
    assert claims["ATESD ≥ OPSD at equal updates"].base_model_verdict == INCONCLUSIVE
    one_base = {method: {(0, seed): value for (_, seed), value in pairs.items()}
                for method, pairs in _scores({"opsd": 0.42, "sft": 0.10}, pairs=2).items()}
    (alone,) = method_claims(one_base, {"opsd": 1.0})
    assert alone.verdict == HELD and alone.base_model_verdict is None and alone.base_model_evidence == ""


def test_claims_section_reads_the_base_models_only_when_there_are_several():
    fixed = {"alpha-0.5": 0.5, "opsd": 1.0}
    several = claims_section(method_claims(_scores({"alpha-0.5": 0.45, "opsd": 0.42}), fixed))
    assert "| verdict for new base models |" in several and several.count("**held**") == 2
    single = {method: {(0, seed): value for (_, seed), value in pairs.items()}
              for method, pairs in _scores({"alpha-0.5": 0.45, "opsd": 0.42}, pairs=2).items()}
    assert "new base models" not in claims_section(method_claims(single, fixed))


def test_bucket_and_mismatch_claims():
    fixed = {"alpha-0": 0.0, "alpha-0.5": 0.5, "opsd": 1.0}
    as_claimed = {"easy": _scores({"alpha-0": 0.8, "alpha-0.5": 0.85, "opsd": 0.9}),
                  "medium": _scores({"alpha-0": 0.4, "alpha-0.5": 0.5, "opsd": 0.45}),
                  "hard": _scores({"alpha-0": 0.2, "alpha-0.5": 0.1, "opsd": 0.05})}
    claim = bucket_claim(as_claimed, fixed)
    assert claim.verdict == HELD and claim.evidence.startswith("hard: best α = 0")
    assert claim.base_model_evidence.startswith("hard: +") and claim.base_model_verdict in {HELD, INCONCLUSIVE}
    as_claimed["easy"] = _scores({"alpha-0": 0.95, "alpha-0.5": 0.85, "opsd": 0.9})
    assert bucket_claim(as_claimed, fixed).verdict == NOT_HELD
    assert bucket_claim(as_claimed, {"opsd": 1.0}) is None

    def stats(value: float) -> dict[str, float]:
        return {"kl_mean": value, "kl_p90": value, "kl_p99": 2 * value, "top1_disagree": value / 10}

    rising = {(0, seed): {"0": stats(0.1 + 0.01 * seed), "0.5": stats(0.2 + 0.02 * seed), "1": stats(0.4)}
              for seed in range(3)}
    assert mismatch_claim(rising).verdict == HELD
    rising[(0, 0)]["1"] = rising[(0, 1)]["1"] = rising[(0, 2)]["1"] = stats(0.15)  # falls from 0.5 to 1
    falling = mismatch_claim(rising)
    assert falling.verdict == NOT_HELD and "kl_p90: 1 of 2 steps up in α raise it (did not hold)" in falling.evidence
    assert falling.base_model_verdict is None  # one base model
    assert mismatch_claim({}) is None
    # two base models that both rise, by different amounts: held over the pairs and over the base models
    two = {(base, seed): {"0": stats(0.1), "1": stats(0.2 + 0.01 * base + 0.001 * seed)}
           for base in range(2) for seed in range(2)}
    both = mismatch_claim(two)
    assert both.verdict == HELD and both.base_model_verdict == HELD
    assert "kl_p99: 1 of 1 steps up in α raise it (held)" in both.base_model_evidence


@pytest.mark.slow
def test_compare_over_base_models_with_fixed_alphas_in_two_jobs(tiny_config, tmp_path, capfd):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    # a cache of its own: the second base model is a second warm start, which the session's cache keeps out
    tiny = ("train.steps=2", "train.checkpoint_every=1", "eval.num_samples=2", "eval.max_problems=6",
            "eval.max_new_tokens=8", "eval.teacher_alpha=null", f"model.embedded.cache_dir={tmp_path / 'cache'}")
    save_config(tiny_config(recipes, *tiny), recipes / "opsd.yaml")
    save_config(tiny_config(recipes, *tiny, "method=atesd", "exposure.policy=controller", "exposure.hold_steps=1",
                            "exposure.controller.lookahead=1", "exposure.controller.decisions_per_update=2"),
                recipes / "atesd.yaml")
    out = tmp_path / "compare"
    args = ["compare", "--recipes", str(recipes), "--seeds", "2", "--base-models", "2", "--alphas", "0", "1",
            "--mismatch-problems", "4", "--jobs", "2", "--out", str(out), "--methods", "base", "atesd"]
    assert main(args) == 0
    printed = capfd.readouterr().out  # the workers print to the file descriptor, not to sys.stdout
    assert "atesd base model 1 seed 1 done" in printed
    assert len(list((tmp_path / "cache").glob("embedded-*"))) == 2  # one warm start per base model
    for name in ["runs/base-w1-seed0/result.json", "runs/alpha-0-w0-seed1/result.json",
                 "runs/opsd-w1-seed1/result.json", "runs/atesd-w0-seed0/result.json",
                 "mismatch/base-w1-seed1.json", "paired.csv", "paired_differences.png", "report.md"]:
        assert (out / name).is_file(), name
    # each base model is the warm start of its own seed, for every method and seed run on it
    assert [load_config(out / f"runs/alpha-0-w{w}-seed1/config.yaml").model.embedded.seed for w in (0, 1)] == [0, 1]
    results = read_csv(out / "results.csv")
    assert list(results[0])[:4] == ["method", "base_model", "seed", "benchmark"]
    assert sorted({(r["base_model"], r["seed"]) for r in results}) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert sorted({r["method"] for r in results}) == ["alpha-0", "atesd", "base", "opsd"]
    paired = read_csv(out / "paired.csv")
    assert {(r["method"], r["reference"]) for r in paired} >= {("atesd", "OPSD"), ("alpha-0", "OPSD")}
    assert {r["pairs"] for r in paired} == {"4"}
    # beside the interval, the mean difference on each of the two base models
    for row in paired:
        assert row["base_models"] == "2" and len(row["by_base_model"].split(" / ")) == 2
        assert 0 <= int(row["base_models_agreeing"]) <= 2
        assert row["base_model_verdict"] in {HELD, NOT_HELD, INCONCLUSIVE}
        assert float(row["base_model_low"]) <= float(row["mean"]) <= float(row["base_model_high"])
    report = (out / "report.md").read_text()
    for heading in ["## Paired differences", "## Mismatch per α", "## The paper's claims", "95% CI"]:
        assert heading in report, heading
    # each paired cell: the interval over the pairs, then (2 base models) the one over the base models' means
    assert re.search(r"^\| atesd \| [+-]\d+\.\d \[[^]]+\] \(\d/4; \d/2 base models; base models \[[^]]+\]\) \|",
                     report, re.MULTILINE)
    assert "the teacher–student mismatch rises monotonically with α" in report
    # what the reward says about α, for atesd (its α varied), pooled over its 4 runs: windows at steps 1 and 2 (L = 1)
    assert "## What the reward says about α" in report and "| atesd | G_lp | 8 |" in report
    assert "| alpha-0 |" not in report.split("## What the reward says about α")[1].split("##")[0]
    # the exposure used counts every run, of both base models
    assert re.search(r"^\| atesd \| 4 \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|$", report, re.MULTILINE)
    mismatch = json.loads((out / "mismatch/base-w0-seed0.json").read_text())
    assert set(mismatch) == {"0", "1"} and mismatch["0"]["tokens"] == mismatch["1"]["tokens"] > 0

    # Another comparison of some of the same runs takes them from this one instead of running them again.
    capfd.readouterr()
    again = tmp_path / "again"
    assert main(["compare", "--recipes", str(recipes), "--seeds", "2", "--base-models", "2", "--reuse", str(out),
                 "--out", str(again), "--methods", "base", "atesd"]) == 0
    printed = capfd.readouterr().out
    assert "reused: base-w0-seed0 ←" in printed and printed.count("finished earlier") == 8
    assert not (again / "runs").exists() and "| atesd | 4 |" in (again / "report.md").read_text()

    # --first-base-model starts the base models further on: here base model 1 alone, whose runs are the ones above.
    capfd.readouterr()
    later = tmp_path / "later"
    shifted = ["compare", "--recipes", str(recipes), "--seeds", "2", "--base-models", "1", "--first-base-model", "1",
               "--reuse", str(out), "--out", str(later), "--methods", "base", "atesd"]
    assert main(shifted) == 0
    printed = capfd.readouterr().out
    assert "reused: base-w1-seed0 ←" in printed and "w0" not in printed and printed.count("finished earlier") == 4
    assert {row["base_model"] for row in read_csv(later / "results.csv")} == {"1"}
    assert main([*shifted[:8], "0", *shifted[9:]]) == 2  # the folder was made with other base models
    assert "first_base_model: 1 there, 0 now" in capfd.readouterr().err

    # A real model has no warm-start seeds: refused before anything runs.
    capfd.readouterr()
    assert main(["compare", "--recipes", str(recipes), "model.name_or_path=/models/qwen3", "--base-models", "2",
                 "--out", str(tmp_path / "real"), "--methods", "base"]) == 2
    assert "--base-models: only the embedded model has warm-start seeds" in capfd.readouterr().err


@pytest.mark.slow
def test_a_longer_budget_continues_the_shorter_runs_it_can_and_equals_them_run_from_scratch(tiny_config, tmp_path,
                                                                                             capfd):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    tiny = ("train.checkpoint_every=1", "eval.num_samples=2", "eval.max_problems=4", "eval.max_new_tokens=8",
            "eval.teacher_alpha=null")
    save_config(tiny_config(recipes, *tiny), recipes / "opsd.yaml")
    save_config(tiny_config(recipes, *tiny, "method=atesd", "exposure.policy=controller", "exposure.hold_steps=1",
                            "exposure.controller.lookahead=2", "exposure.controller.decisions_per_update=2"),
                recipes / "atesd.yaml")

    def compare(out: str, steps: int, *extra: str) -> int:
        return main(["compare", "--recipes", str(recipes), f"train.steps={steps}", "--seeds", "1", "--out",
                     str(tmp_path / out), *extra, "--methods", "base", "opsd", "atesd"])

    assert compare("short", 2) == 0
    assert compare("long", 4, "--continue-from", str(tmp_path / "short")) == 0
    printed = capfd.readouterr().out
    # OPSD's first 2 updates are the 2-update run; ATESD's controller reads t/T, so it trains from scratch
    assert "continued: opsd-seed0 from" in printed and "continued: atesd-seed0" not in printed
    assert compare("scratch", 4) == 0

    def logged(out: str, run: str, name: str) -> list[dict]:
        rows = [json.loads(line) for line in (tmp_path / out / "runs" / run / name).read_text().splitlines()]
        return [{key: value for key, value in row.items() if "time" not in key} for row in rows]

    continued = logged("long", "opsd-seed0", "metrics.jsonl")
    assert [row["step"] for row in continued] == [1, 2, 3, 4] and continued == logged("scratch", "opsd-seed0",
                                                                                       "metrics.jsonl")
    long, scratch = (read_csv(tmp_path / out / "results.csv") for out in ("long", "scratch"))
    assert [(r["method"], r["average@2"]) for r in long] == [(r["method"], r["average@2"]) for r in scratch]
    # a learning rate that decays over train.steps makes the first updates depend on the length: from scratch
    capfd.readouterr()
    assert compare("cosine-short", 2, "train.lr_scheduler=cosine") == 0
    assert compare("cosine-long", 4, "train.lr_scheduler=cosine", "--continue-from",
                   str(tmp_path / "cosine-short")) == 0
    assert "continued" not in capfd.readouterr().out


def test_difficulty_section_averages_each_runs_last_quarter_by_difficulty():
    from atesd.experiments.compare_report import difficulty_section

    def rows(easy: float, hard: float) -> list[dict]:
        # steps 1-8: the first six at α 0.5 (outside the last quarter), the last two at the run's own α
        return [{"step": step, "alpha": [0.5, 0.5] if step <= 6 else [easy, hard], "bucket": ["ops=2", "ops=10"]}
                for step in range(1, 9)]

    section = difficulty_section({"atesd-per-problem": {"a": rows(0.9, 0.3), "b": rows(0.7, 0.3)}})
    header = "| method | runs | ops=2 | ops=10 | ops=10 − ops=2 |"
    assert header in section  # natural order: ops=2 before ops=10
    half = T95_1 * statistics.stdev([-0.6, -0.4]) / math.sqrt(2)
    assert (f"| atesd-per-problem | 2 | 0.80 ± 0.14 | 0.30 ± 0.00 | −0.50 [{-0.5 - half:+.2f}, {-0.5 + half:+.2f}] |"
            .replace("−", "-") in section.replace("−", "-"))
    assert difficulty_section({}) == ""
