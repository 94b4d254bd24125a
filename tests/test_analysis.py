"""The experiment runners: difficulty buckets, best-α selection and settings guard by hand, and `atesd sweep` /
`atesd compare` end to end on the tiny embedded setting, including a comparison killed midway and continued."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import atesd.experiments.runs as runs_module
from atesd.cli import main
from atesd.config import ConfigError, save_config
from atesd.eval.grading import GradeResult
from atesd.eval.metrics import ProblemResult
from atesd.experiments.buckets import bucket_of, difficulty_buckets, rebucketed_summary
from atesd.experiments.guards import guard_settings
from atesd.experiments.sweep import best_alpha
from atesd.experiments.tables import mean_std, read_csv
from atesd.train.recipe import Trainer

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

# Tiny runs: 2 updates of 4 prompts, 6 eval problems x 2 samples. EVERY_STEP makes random and controller
# exposures change at every step: the recipes' atesd.yaml has it, and a comparison passes it on to its random runs
# (the comparison's exposure settings go to the methods whose policy takes them).
TINY_RECIPE = ("train.steps=2", "train.checkpoint_every=1", "eval.num_samples=2", "eval.max_problems=6",
               "eval.max_new_tokens=8", "eval.teacher_alpha=null")
EVERY_STEP = "exposure.hold_steps=1"


def _results(pattern: dict[str, list[int]]) -> list[ProblemResult]:
    """One ProblemResult per problem id, its samples graded as the 0/1 flags given (answer "1" when right)."""
    return [ProblemResult(problem, "1", ["x"] * len(flags),
                          [GradeResult("1" if flag else "0", bool(flag), True) for flag in flags], bucket="ops=3")
            for problem, flags in pattern.items()]


def test_buckets_pool_the_base_seeds_and_split_at_one_and_two_thirds():
    assert [bucket_of(x) for x in (0.0, 0.33, 1 / 3, 0.5, 0.66, 2 / 3, 1.0)] == \
        ["hard", "hard", "medium", "medium", "medium", "easy", "easy"]
    seed0 = _results({"a": [1, 0, 0], "b": [1, 1, 0], "c": [1, 1, 1], "d": [1, 0, 0], "e": [1, 1, 0]})
    seed1 = _results({"a": [0, 0, 0], "b": [0, 1, 0], "c": [1, 1, 0], "d": [1, 0, 0], "e": [1, 1, 1]})
    # pooled Averages: a 1/6, b 3/6, c 5/6, d 2/6 (exactly 1/3), e 5/6
    buckets = difficulty_buckets([seed0, seed1])
    assert buckets == {"a": "hard", "b": "medium", "c": "easy", "d": "medium", "e": "easy"}

    # The base buckets replace the file's own ("ops=3"); metrics per bucket are summarize's, by hand:
    trained = _results({"a": [1, 1, 0], "b": [0, 0, 0], "c": [1, 1, 1], "d": [1, 0, 1], "e": [0, 0, 0]})
    summary = rebucketed_summary(trained, buckets, 3, Path("trained.json"))
    assert list(summary) == ["all", "easy", "hard", "medium"]
    assert summary["hard"]["average@3"] == pytest.approx(2 / 3)
    assert summary["medium"]["average@3"] == pytest.approx((0 + 2 / 3) / 2)
    assert summary["easy"]["average@3"] == pytest.approx(0.5)
    assert summary["all"]["average@3"] == pytest.approx((2 / 3 + 0 + 1 + 2 / 3 + 0) / 5)
    assert summary["easy"]["num_problems"] == 2

    with pytest.raises(ValueError, match=r"other\.json: problems \['z'\]"):
        rebucketed_summary(_results({"z": [1]}), buckets, 1, Path("other.json"))


def test_best_alpha_is_the_best_mean_over_seeds(tmp_path):
    rows = [("0", 0, 0.30), ("0", 1, 0.50), ("0.5", 0, 0.45), ("0.5", 1, 0.41), ("1", 0, 0.60), ("1", 1, 0.20)]
    with open(tmp_path / "sweep.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["alpha", "seed", "benchmark", "average@4", "average@4_hard", "pass@4"])
        writer.writerows([(a, s, "embedded", v, 0.9, 0.9) for a, s, v in rows])
    assert best_alpha(tmp_path) == 0.5  # means: 0.40, 0.43, 0.40
    with pytest.raises(ConfigError, match="does not exist"):
        best_alpha(tmp_path / "missing")


def test_settings_guard_names_what_differs(tmp_path):
    guard_settings(tmp_path / "compare.json", {"seeds": 3, "methods": ("opsd", "atesd"), "quick": False})
    guard_settings(tmp_path / "compare.json", {"seeds": 3, "methods": ["opsd", "atesd"], "quick": False})
    with pytest.raises(ConfigError, match=r"quick: False there, True now; seeds: 3 there, 2 now"):
        guard_settings(tmp_path / "compare.json", {"seeds": 2, "methods": ["opsd", "atesd"], "quick": True})
    assert mean_std([1.0, None, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert mean_std([None]) == (None, None)


@pytest.fixture(scope="module")
def recipes(tiny_config, tmp_path_factory) -> Path:
    """A recipe folder of tiny embedded OPSD, ATESD, SFT and GRPO configs."""
    folder = tmp_path_factory.mktemp("recipes")
    save_config(tiny_config(folder, *TINY_RECIPE), folder / "opsd.yaml")
    save_config(tiny_config(folder, *TINY_RECIPE, "method=sft"), folder / "sft.yaml")
    save_config(tiny_config(folder, *TINY_RECIPE, "method=grpo", "grpo.group_size=2", "train.batch_size=2"),
                folder / "grpo.yaml")
    save_config(tiny_config(folder, *TINY_RECIPE, "method=atesd", "exposure.policy=controller", EVERY_STEP,
                            "exposure.controller.lookahead=1", "exposure.controller.decisions_per_update=2"),
                folder / "atesd.yaml")
    return folder


@pytest.fixture(scope="module")
def sweep_dir(recipes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert main(["sweep", str(recipes / "opsd.yaml"), "--alphas", "0.5", "1", "--seeds", "2", "--out", str(out),
                 "--mismatch-problems", "4"]) == 0
    return out


def test_sweep_writes_csv_table_and_plots(sweep_dir, recipes, capsys):
    for name in ["sweep.json", "sweep.csv", "sweep.md", "accuracy_vs_alpha.png", "mismatch_vs_alpha.png",
                 "bucket_accuracy_vs_alpha.png", "mismatch/seed0.json", "mismatch/seed1.json",
                 "runs/base-seed1/result.json", "runs/alpha-0.5-seed1/result.json"]:
        assert (sweep_dir / name).is_file(), name
    rows = read_csv(sweep_dir / "sweep.csv")
    assert list(rows[0]) == ["alpha", "seed", "benchmark", "average@2", "average@2_hard", "average@2_medium",
                             "average@2_easy", "pass@2", "maj@2", "boxed_rate", "kl_mean", "kl_p90", "kl_p99",
                             "top1_disagree"]
    assert sorted((float(r["alpha"]), int(r["seed"])) for r in rows) == [(0.5, 0), (0.5, 1), (1, 0), (1, 1)]
    for row in rows:
        assert 0 <= float(row["average@2"]) <= float(row["pass@2"]) <= 1
        assert 0 <= float(row["kl_mean"]) <= float(row["kl_p99"]) and float(row["kl_p90"]) <= float(row["kl_p99"])
        assert 0 <= float(row["top1_disagree"]) <= 1
    # the mismatch of a seed is measured once, on one set of rollouts, for all α
    mismatch = json.loads((sweep_dir / "mismatch/seed0.json").read_text())
    assert set(mismatch) == {"0.5", "1"} and mismatch["0.5"]["tokens"] == mismatch["1"]["tokens"] > 0
    table = (sweep_dir / "sweep.md").read_text()
    assert "| α | seeds | Average@2 | hard | medium | easy | Pass@2 | Maj@2 | kl_mean | kl_p90 | kl_p99 | " \
           "top1_disagree |" in table
    assert "| base | 2 |" in table and "| 0.5 | 2 |" in table and "| 1 | 2 |" in table
    assert "![accuracy_vs_alpha](accuracy_vs_alpha.png)" in table

    # Again with the same arguments: nothing runs; with other settings: refused, naming them.
    capsys.readouterr()
    assert main(["sweep", str(recipes / "opsd.yaml"), "--alphas", "0.5", "1", "--seeds", "2", "--out",
                 str(sweep_dir), "--mismatch-problems", "4"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 6
    assert main(["sweep", str(recipes / "opsd.yaml"), "--alphas", "0.5", "--seeds", "2", "--out",
                 str(sweep_dir), "--mismatch-problems", "4"]) == 2
    assert "alphas: [0.5, 1.0] there, [0.5] now" in capsys.readouterr().err


def test_compare_runs_the_peers_methods(recipes, tmp_path):
    out = tmp_path / "peers"
    peers = ["adaback", "seele", "paint", "ar-opd"]
    assert main(["compare", "--recipes", str(recipes), "--seeds", "1", "--out", str(out), "--methods", "base", "opsd",
                 *peers]) == 0
    results = {row["method"]: row for row in read_csv(out / "results.csv")}
    assert list(results) == ["base", "opsd", *peers]
    # the rules decide one α per problem (drawn by difficulty); AR-OPD pays one more teacher forward than OPSD
    assert (out / "alpha_by_difficulty.png").is_file() and "| adaback | 1 |" in (out / "report.md").read_text()
    assert int(results["ar-opd"]["forward_tokens"]) > int(results["opsd"]["forward_tokens"])
    for rule in peers[:3]:
        assert f"policy: {rule}" in (out / f"runs/{rule}-seed0/config.yaml").read_text()


def test_compare_killed_midway_continues_without_redoing_runs(recipes, sweep_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "compare"
    methods = ["opsd", "fixed-best", "random", "atesd", "sft", "grpo"]
    args = ["compare", "--recipes", str(recipes), "--methods", "base", *methods, "--seeds", "2", "--out", str(out),
            "--sweep", str(sweep_dir), EVERY_STEP]
    started: list[tuple[str, bool]] = []
    steps: list[str] = []
    interrupt = [True]

    class CountingTrainer(Trainer):
        """Records each run it starts; interrupts the second update of the second run that trains."""

        def __init__(self, config, *, resume=False):
            started.append((config.run.name, resume))
            super().__init__(config, resume=resume, on_local_step=self.count_step)

        def count_step(self, record, local):
            steps.append(self.run_dir.name)
            if interrupt[0] and len(steps) == 4:
                raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "Trainer", CountingTrainer)
    assert main(args) == 130
    # base and opsd (α = 1) come from the sweep, and so does fixed-best (the sweep's best α is 0.5 or 1)
    assert started == [("random-seed0", False), ("atesd-seed0", False)]
    assert "reused: base-seed0 ←" in capsys.readouterr().out

    interrupt[0] = False
    started.clear()
    assert main(args) == 0
    # random-seed0 is never retrained; atesd-seed0 resumes from its checkpoint at step 1
    assert started == [("atesd-seed0", True), ("sft-seed0", False), ("grpo-seed0", False), ("random-seed1", False),
                       ("atesd-seed1", False), ("sft-seed1", False), ("grpo-seed1", False)]
    out_text = capsys.readouterr().out
    assert "[5/14] random seed 0: finished earlier" in out_text and "[6/14] atesd seed 0 ..." in out_text
    metrics = [json.loads(line) for line in (out / "runs/atesd-seed0/metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics] == [1, 2]
    assert not (out / "runs/opsd-seed0").exists() and not (out / "runs/base-seed0").exists()

    for name in ["compare.json", "results.csv", "summary.csv", "report.md", "accuracy.png", "learning_curves.png",
                 "alpha_trajectories.png"]:
        assert (out / name).is_file(), name
    results = read_csv(out / "results.csv")
    assert [r["method"] for r in results] == ["base", "base", *methods * 2]
    assert list(results[0])[:5] == ["method", "base_model", "seed", "benchmark", "average@2"]
    for row in results:
        assert 0 <= float(row["average@2"]) <= 1
        trained, rolls_out = row["method"] != "base", row["method"] not in ("base", "sft")
        assert (int(row["updates"]) == 2) == trained and (int(row["forward_tokens"]) > 0) == trained
        assert (int(row["generated_tokens"]) > 0) == rolls_out
        assert float(row["eval_seconds"]) > 0
    summary = read_csv(out / "summary.csv")
    assert [(r["method"], r["seeds"]) for r in summary] == [(m, "2") for m in ["base", *methods]]
    assert {"average@2_mean", "average@2_std", "pass@2_mean", "maj@2_std", "generated_tokens_mean",
            "forward_tokens_mean", "train_seconds_mean"} <= set(summary[0])
    report = (out / "report.md").read_text()
    assert "| method | runs | Average@2 | 95% CI | hard | medium | easy | Pass@2 | Maj@2 | generated tokens | " \
           "forward tokens | train s |" in report
    assert "| random | 2 |" in report and "atesd compare --recipes" in report
    assert "![learning_curves](learning_curves.png)" in report and "![alpha_trajectories]" in report
    # every method against OPSD, the best fixed α and random exposure, the control an adaptive policy must beat
    assert "| method | − OPSD (opsd) |" in report and "| − random exposure (random) |" in report
    pairs = {(row["method"], row["reference"]) for row in read_csv(out / "paired.csv")}
    assert {("atesd", "random exposure"), ("atesd", "OPSD"), ("sft", "random exposure")} <= pairs


def test_sweep_and_compare_warm_start_an_uncached_base_model(tiny_config, tmp_path):
    """A new user's first `sweep` and `compare --alphas` on an empty cache: the mismatch statistics load the
    base model under `torch.no_grad()`, and the warm start that this first load runs must still train."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    empty = tmp_path / "empty-cache"
    save_config(tiny_config(recipes, *TINY_RECIPE, f"model.embedded.cache_dir={empty}"), recipes / "opsd.yaml")
    assert main(["sweep", str(recipes / "opsd.yaml"), "--alphas", "0.5", "1", "--seeds", "1", "--out",
                 str(tmp_path / "sweep"), "--mismatch-problems", "2"]) == 0
    assert json.loads((tmp_path / "sweep" / "mismatch" / "seed0.json").read_text())["1"]["tokens"] > 0

    other = tmp_path / "other-empty-cache"
    save_config(tiny_config(recipes, *TINY_RECIPE, f"model.embedded.cache_dir={other}"), recipes / "opsd.yaml")
    assert main(["compare", "--recipes", str(recipes), "--seeds", "1", "--out", str(tmp_path / "compare"),
                 "--methods", "base", "opsd", "--alphas", "0.25", "0.5", "--mismatch-problems", "2"]) == 0
    assert (tmp_path / "compare" / "report.md").is_file() and list((tmp_path / "compare" / "mismatch").glob("*.json"))
    assert [path.name for path in other.iterdir()] and [path.name for path in empty.iterdir()]
