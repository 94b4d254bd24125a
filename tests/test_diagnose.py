"""`atesd diagnose` and the diagnosis in a run's summary and in `atesd compare`'s report: a real random-exposure run's
figures against an independent recomputation from its metrics.jsonl, the controller's logged rewards against the
rebuild, a synthetic log whose slope on α is known, exposure per problem's credit, and the command's user errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from atesd.cli import main
from atesd.config import load_config, save_config
from atesd.experiments.compare_report import diagnosis_section
from atesd.experiments.diagnose import RunSettings, diagnose

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = REPO_ROOT / "configs" / "embedded" / "opsd.yaml"
RANDOM_RUN = ("exposure.policy=random", "exposure.hold_steps=2", "train.teacher_ref_logp_every=1",
              "train.steps=32", "train.checkpoint_every=32")


def _recompute(run_dirs: list[Path]) -> dict[str, dict[str, float]]:
    """Written out by hand from SPEC §4, apart from atesd: every window (a decision every H = 2 updates, L = 4,
    γ = 0.9, λ_gt = 0.1), each term regressed on [α, t/T, one 0/1 column per run] by numpy's lstsq."""
    gamma, lookahead, weight, steps = 0.9, 4, 0.1, 32
    points: dict[str, list[tuple[int, float, float, float]]] = {}  # term -> (run, α, t/T, value)
    for index, run_dir in enumerate(run_dirs):
        rows = {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
        for start in range(1, max(rows) + 1, 2):
            if start + lookahead - 1 > max(rows):
                continue
            nll = [rows[start]["probe_nll_before"]] + [rows[start + i]["probe_nll"] for i in range(lookahead)]
            g = [rows[start + i]["teacher_ref_logp"] for i in range(lookahead)]
            w = [gamma**i for i in range(lookahead)]
            g_lp = sum(w[i] * max(0.0, nll[i] - nll[i + 1]) for i in range(lookahead))
            g_gt = sum(w[i] * g[i] for i in range(lookahead)) / sum(w)
            values = {"G_lp": g_lp, "G_gt": g_gt, "R": g_lp + weight * g_gt,
                      "lp_signed": sum(w[i] * (nll[i] - nll[i + 1]) for i in range(lookahead)),
                      "probe_drop": nll[0] - nll[-1]}
            if start - lookahead + 1 >= 1 and start + lookahead <= max(rows):
                after = [rows[start + i]["rollout_accuracy"] for i in range(1, lookahead + 1)]
                before = [rows[start - i]["rollout_accuracy"] for i in range(lookahead)]
                values["accuracy"] = sum(after) / lookahead - sum(before) / lookahead
            for term, value in values.items():
                points.setdefault(term, []).append((index, rows[start]["alpha"], (start - 1) / steps, value))
    figures = {}
    for term, chosen in points.items():
        if len({value for *_, value in chosen}) == 1:  # the tiny model never solves a problem: accuracy stays 0
            figures[term] = {"n": len(chosen), "slope": None, "reason": "the term never varied"}
            continue
        x = np.array([[alpha, progress] + [float(run == r) for r in range(len(run_dirs))]
                      for run, alpha, progress, _ in chosen])
        y = np.array([value for *_, value in chosen])
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        residual = y - x @ beta
        variance = residual @ residual / (len(y) - x.shape[1])
        se = math.sqrt(variance * np.linalg.pinv(x.T @ x)[0, 0])
        t = beta[0] / se
        figures[term] = {"n": len(y), "slope": beta[0], "se": se, "t": t, "needed_for_t2": len(y) * (2 / t) ** 2}
    return figures


@pytest.mark.slow
def test_a_random_exposure_runs_diagnosis_equals_a_recomputation_from_its_metrics(tiny_config, tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        path = tmp_path / f"random{seed}.yaml"
        save_config(tiny_config(tmp_path, *RANDOM_RUN, f"run.seed={seed}", f"run.name=random-{seed}"), path)
        assert main(["train", str(path)]) == 0
        runs.append(tmp_path / "runs" / f"random-{seed}")
    printed = capsys.readouterr().out
    assert "## What the reward says about α" in printed  # atesd train prints the run's own diagnosis
    assert (runs[0] / "diagnose.md").is_file() and (runs[0] / "diagnose.json").is_file()

    out = tmp_path / "diagnosis"
    assert main(["diagnose", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| term | windows | mean | sd | slope on α | SE | t | windows for t = 2 |" in printed
    assert (out / "diagnose.md").read_text().count("| G_gt |") == 1 and (out / "diagnose.csv").is_file()
    result = json.loads((out / "diagnose.json").read_text())
    fits = {row["signal"]: row for row in result["fits"] if row["table"] == "windows"}
    expected = _recompute(runs)
    assert set(expected) <= set(fits)  # and our estimators of the probe NLL (tests/test_diagnose_signals.py)
    assert set(fits) - set(expected) == {"probe_tscl", "probe_alp", "probe_quantile"}
    for term, figures in expected.items():
        for key, value in figures.items():
            assert fits[term][key] == (value if value is None or isinstance(value, str) else
                                       pytest.approx(value, rel=1e-9, abs=1e-12)), (term, key)
    assert fits["G_lp"]["n"] == 2 * 15  # windows starting at steps 1, 3, …, 29 of each run
    assert fits["G_gt"]["t"] is not None and fits["R"]["t"] is not None
    # random exposure logs its draws: they are the hold windows' α
    assert all("α agrees" in run["checks"][0] for run in result["runs"])


def _train(tiny_config, tmp_path: Path, *overrides: str) -> Path:
    """`atesd train` of a tiny ATESD run (a controller small enough to decide and learn in a few steps)."""
    config = tiny_config(tmp_path, "method=atesd", "exposure.policy=controller", "exposure.controller.hidden_sizes=[8]",
                         "train.checkpoint_every=100", *overrides)
    save_config(config, tmp_path / "atesd.yaml")
    assert main(["train", str(tmp_path / "atesd.yaml")]) == 0
    return Path(config.run.output_dir) / "atesd-seed0"


@pytest.mark.slow
def test_the_rebuilt_rewards_equal_the_controllers_logged_ones(tiny_config, tmp_path):
    run = _train(tiny_config, tmp_path, "exposure.hold_steps=2", "exposure.controller.lookahead=3",
                 "exposure.controller.decisions_per_update=2", "train.steps=12")
    summary = (run / "diagnose.md").read_text()
    assert "the rebuilt R, G_lp, G_gt equal the 5 logged rewards" in summary  # decisions at 1, 3, …, 9


@pytest.mark.slow
def test_a_real_exposure_per_problem_run_gives_each_credited_problems_credit(tiny_config, tmp_path):
    run = _train(tiny_config, tmp_path, "exposure.per_problem=true", "exposure.controller.lookahead=2",
                 "exposure.controller.credited_problems=2", "train.steps=10")
    result = json.loads((run / "diagnose.json").read_text())
    credit = {row["signal"]: row for row in result["fits"] if row["table"] == "per_problem_within_step"}
    assert credit["R"]["n"] == 2 * 8  # 2 credited problems of each of the 8 steps rewarded L = 2 updates later
    assert result["runs"][0]["policy"] == "per_problem" and not result["runs"][0]["warnings"]
    assert "each step's mean α agrees with metrics.jsonl" in result["runs"][0]["checks"][0]
    assert "### Exposure per problem: each problem's credit on its own α" in (run / "diagnose.md").read_text()


def _synthetic_run(directory: Path, seed: int, *, slope: float = 0.5, noise: float = 0.2, steps: int = 400) -> Path:
    """A random-exposure run's logs with H = L = 2: g_t = −1 + slope · α + noise, so that G_gt's slope on α is
    `slope`; the probe NLL falls 0.01 per update whatever α."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    save_config(load_config(EMBEDDED_CONFIG, ["exposure.policy=random", "exposure.hold_steps=2",
                                              "exposure.controller.lookahead=2", f"train.steps={steps}"]),
                directory / "config.yaml")
    rows, nll, alpha = [], 2.0, 0.0
    for step in range(1, steps + 1):
        if step % 2 == 1:
            alpha = float(rng.uniform(0.05, 1.0))
        before, nll = nll, nll - 0.01 + float(rng.normal(0, 0.01))
        rows.append({"step": step, "alpha": alpha, "probe_nll_before": before, "probe_nll": nll,
                     "teacher_ref_logp": -1 + slope * alpha + float(rng.normal(0, noise)),
                     "rollout_accuracy": float(rng.uniform())})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def test_a_known_slope_on_alpha_is_recovered_with_its_t(tmp_path, capsys):
    runs = [_synthetic_run(tmp_path / f"run{seed}", seed) for seed in range(3)]
    assert main(["diagnose", *map(str, runs), "--out", str(tmp_path / "out")]) == 0
    fits = {row["signal"]: row for row in json.loads((tmp_path / "out/diagnose.json").read_text())["fits"]}
    g_gt = fits["G_gt"]
    assert g_gt["n"] == 3 * 200
    # G_gt's noise: the discounted mean of two draws of sd 0.2; α ~ U[0.05, 1] has sd 0.95 / √12
    expected_se = 0.2 * math.sqrt(1 + 0.81) / 1.9 / (0.95 / math.sqrt(12)) / math.sqrt(600)
    assert g_gt["se"] == pytest.approx(expected_se, rel=0.15)
    assert abs(g_gt["slope"] - 0.5) < 3 * g_gt["se"]
    assert g_gt["t"] == pytest.approx(0.5 / expected_se, rel=0.25)
    assert g_gt["needed_for_t2"] == pytest.approx(600 * (2 / g_gt["t"]) ** 2)
    # the probe falls whatever α: its terms' t stay within noise
    assert abs(fits["lp_signed"]["t"]) < 4 and abs(fits["probe_drop"]["t"]) < 4
    assert "no decisions.jsonl: windows at every 2 updates from step 1" in capsys.readouterr().out
    # --out naming a file is one line, as for every command
    (tmp_path / "a-file").write_text("")
    assert main(["diagnose", *map(str, runs), "--out", str(tmp_path / "a-file")]) == 2
    assert "--out" in capsys.readouterr().err


def _per_problem_decisions(rng: np.random.Generator, steps: int, slope: float) -> list[dict]:
    """Exposure per problem's decisions.jsonl rows: 8 credited problems of 16 per step, R_i = slope · α_i plus a
    shared effect of the step (the drift) and noise."""
    rows = []
    for step in range(1, steps + 1):
        alphas = rng.uniform(0.05, 1.0, 16).tolist()
        drift = 1.0 / step
        g_lp = [slope * a + drift + float(rng.normal(0, 0.1)) for a in alphas[:8]]
        g_gt = [-1.0 + a + float(rng.normal(0, 0.1)) for a in alphas[:8]]  # the teacher's log-prob: mechanical
        rows.append({"step": step, "problem": list(range(16)), "alpha": alphas, "credited": 8, "R": g_lp,
                     "G_lp": g_lp, "G_gt": g_gt})
    return rows


def test_exposure_per_problem_regresses_each_problems_credit_on_its_own_alpha():
    rng = np.random.default_rng(0)
    settings = RunSettings("pp", "per_problem", 1, 4, 0.9, 0.0, "probe_nll", 100, per_problem=True, credits=True)
    decisions = _per_problem_decisions(rng, 100, slope=0.2)
    metrics = [{"step": row["step"], "alpha": float(np.mean(row["alpha"])), "probe_nll_before": 1.0,
                "probe_nll": 1.0, "rollout_accuracy": 0.5} for row in decisions]
    diagnosis = diagnose([(settings, metrics, decisions)])
    within = {fit.signal: fit for fit in diagnosis.credit_within_step}
    assert within["R"].n == 800 and abs(within["R"].slope - 0.2) < 3 * within["R"].se
    assert within["R"].t > 10
    assert diagnosis.credited_per_step == 8
    assert abs(within["G_gt"].slope - 1.0) < 3 * within["G_gt"].se
    by_run = {fit.signal: fit for fit in diagnosis.credit}  # one intercept per run, and t/T, instead
    assert by_run["R"].n == 800 and abs(by_run["R"].slope - 0.2) < 3 * by_run["R"].se
    assert "mean α agrees" in diagnosis.runs[0]["checks"][0]

    section = diagnosis_section({"atesd-per-problem": diagnosis})
    assert "## What the reward says about α" in section and "| atesd-per-problem | R |" in section
    assert "| atesd-per-problem | R | 800 |" in section  # the per-problem credit's table
    assert f"{within['R'].t:+.2f}" in section


def test_the_comparison_section_pools_each_methods_runs(tmp_path):
    runs = [_synthetic_run(tmp_path / f"run{seed}", seed, steps=100) for seed in range(2)]
    from atesd.experiments.diagnose_report import method_diagnoses

    diagnoses = method_diagnoses({"random": runs})
    section = diagnosis_section(diagnoses)
    g_gt = next(fit for fit in diagnoses["random"].windows if fit.signal == "G_gt")
    assert g_gt.n == 100 and "| random | G_gt | 100 |" in section and f"{g_gt.t:+.2f}" in section
    assert "G_gt's slope measures how the teacher reads the reference" in section
    assert "Checks: 2 of 2 runs without a warning" in section
    assert diagnosis_section({}) == ""
    shorter = diagnose([(RunSettings("short", "random", 2, 4, 0.9, 0.1, "probe_nll", 3),
                         [{"step": step, "alpha": 0.1 * step} for step in (1, 2, 3)], [])])
    assert {fit.reason for fit in shorter.windows} == {"no complete window: a window needs its L updates logged"}


def test_logs_that_disagree_with_the_rebuild_or_lack_g_are_said_in_the_report(tmp_path):
    run = _synthetic_run(tmp_path / "run", 0, steps=40)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    decisions = [{"step": row["step"], "alpha": row["alpha"], "R": 1.0, "G_lp": 1.0, "G_gt": 1.0}
                 for row in rows if row["step"] % 2 == 1]  # logged rewards that are not the controller's
    (run / "decisions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in decisions))
    (run / "metrics.jsonl").write_text("".join(json.dumps({**row, "teacher_ref_logp": None if row["step"] == 7
                                                           else row["teacher_ref_logp"]}) + "\n" for row in rows))
    from atesd.experiments.diagnose_report import method_diagnoses

    diagnosis = method_diagnoses({"random": [run]})["random"]
    warnings = diagnosis.runs[0]["warnings"]
    assert "the rebuilt rewards differ from the logged ones" in warnings[0]
    assert "1 of 20 windows lack g (teacher_ref_logp) at some step" in warnings[1]  # the window at steps 7-8 (L = 2)
    fits = {fit.signal: fit for fit in diagnosis.windows}
    assert fits["G_gt"].n == 19 and fits["G_lp"].n == 20
    section = diagnosis_section({"random": diagnosis})
    assert "0 of 1 runs without a warning (α held over each window, decisions.jsonl agrees with the rebuild, g " \
        "logged at every step) · run: decisions.jsonl: " in section


# ---------------------------------------------------------------------------------------- user errors: one line, rc 2

def _error(capsys, *args: str) -> str:
    assert main(["diagnose", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atesd: error: ") and err.count("\n") == 1, err
    return err


def test_diagnose_errors_name_the_file_and_what_to_do(tmp_path, capsys):
    assert "no such folder" in _error(capsys, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "no metrics.jsonl, nor runs/*/metrics.jsonl" in _error(capsys, str(tmp_path / "empty"))

    fixed = _synthetic_run(tmp_path / "fixed", 0, steps=10)
    rows = [json.loads(line) for line in (fixed / "metrics.jsonl").read_text().splitlines()]
    (fixed / "metrics.jsonl").write_text("".join(json.dumps({**row, "alpha": 1.0}) + "\n" for row in rows))
    err = _error(capsys, str(fixed))
    assert "its α never varied (α = 1 throughout)" in err and "exposure.policy=random" in err

    damaged = _synthetic_run(tmp_path / "damaged", 0, steps=10)
    lines = (damaged / "metrics.jsonl").read_text().splitlines()
    (damaged / "metrics.jsonl").write_text("\n".join([*lines[:3], lines[3][:20], *lines[4:]]) + "\n")
    err = _error(capsys, str(damaged))
    assert "damaged/metrics.jsonl" in err and "row 4" in err

    no_config = _synthetic_run(tmp_path / "noconfig", 0, steps=10)
    (no_config / "config.yaml").unlink()
    assert "noconfig/config.yaml: missing" in _error(capsys, str(no_config))

    # an out folder whose runs all kept α fixed
    (tmp_path / "sweep" / "runs").mkdir(parents=True)
    fixed.rename(tmp_path / "sweep" / "runs" / "alpha-1-seed0")
    assert "no run whose α varied" in _error(capsys, str(tmp_path / "sweep"))


def test_a_torn_last_line_is_dropped_and_an_out_folder_keeps_its_varying_runs(tmp_path, capsys):
    folder = tmp_path / "compare" / "runs"
    _synthetic_run(folder / "random-seed0", 0, steps=40)
    with open(folder / "random-seed0" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 41, "alph')  # killed while writing
    fixed = _synthetic_run(folder / "opsd-seed0", 1, steps=40)
    rows = [json.loads(line) for line in (fixed / "metrics.jsonl").read_text().splitlines()]
    (fixed / "metrics.jsonl").write_text("".join(json.dumps({**row, "alpha": 1.0}) + "\n" for row in rows))
    assert main(["diagnose", str(tmp_path / "compare")]) == 0
    printed = capsys.readouterr().out
    assert "Note: left out, their α fixed or scheduled: opsd-seed0" in printed
    assert "| random-seed0 | random |" in printed
    assert (tmp_path / "compare" / "diagnose.md").is_file()


def test_a_run_counts_once_and_two_runs_never_merge_by_name(tmp_path):
    """A run given directly, through its out folder, through a symlink and with a trailing slash is one run; runs
    named alike in two comparisons are two runs, each its own intercept."""
    from atesd.experiments.diagnose_report import run_directories, run_labels

    for out in ("compare-a", "compare-b"):
        run = tmp_path / out / "runs" / "random-seed0"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"step": 1, "alpha": 0.5}\n')
    (tmp_path / "link").symlink_to(tmp_path / "compare-a" / "runs" / "random-seed0")
    found = run_directories([tmp_path / "compare-a", tmp_path / "compare-a" / "runs" / "random-seed0",
                             tmp_path / "link", Path(f"{tmp_path / 'compare-a' / 'runs' / 'random-seed0'}/"),
                             tmp_path / "compare-b"])
    assert found == [(tmp_path / out / "runs" / "random-seed0").resolve() for out in ("compare-a", "compare-b")]
    labels = run_labels(found)
    assert sorted(labels.values()) == ["compare-a/runs/random-seed0", "compare-b/runs/random-seed0"]
    assert run_labels(found[:1]) == {found[0]: "random-seed0"}
