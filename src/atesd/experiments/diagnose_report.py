"""`atesd diagnose`: finds the runs of the folders it is given, checks that their α varied, and writes what each
reward term says about α (`atesd.experiments.diagnose`) as diagnose.md, diagnose.csv and diagnose.json; the same
tables go into a training run's summary and `atesd compare`'s report (docs/controller.md#what-the-reward-says-about-α).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atesd.config import load_run_config
from atesd.errors import UserError
from atesd.experiments.diagnose import CREDIT_SIGNALS, SIGNALS, Diagnosis, Fit, RunSettings, diagnose
from atesd.experiments.diagnose_signals import ALIGNMENT_SIGNALS, EXTRA_SIGNALS
from atesd.experiments.runs import RUNS_DIR
from atesd.experiments.tables import markdown
from atesd.files import atomic_write_text
from atesd.train.metrics import read_metrics

RunLogs = tuple[RunSettings, list[dict[str, Any]], list[dict[str, Any]]]  # settings, metrics rows, decision rows
FILES = ("diagnose.md", "diagnose.csv", "diagnose.json")
MECHANICAL = ("G_gt's slope measures how the teacher reads the reference, not what the student learns: it rose with α "
              "on base model 0 and fell on base model 1 (docs/controller.md#signals-with-power), whatever the "
              "student learned, and R inherits it in proportion to λ_gt.")


def run_directories(paths: Sequence[Path]) -> list[Path]:
    """The run directories among `paths`: each a run (holding metrics.jsonl) or an experiment's out folder
    (a compare or sweep, whose runs are ``runs/*``). Each is resolved (symlinks, ``..``, a trailing slash), and a run
    given twice (directly and through its out folder) counts once."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: no such folder; pass a training run's directory (it holds metrics.jsonl) or "
                            "an atesd compare or sweep out folder")
        path = path.resolve()
        if (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        inner = sorted(d for d in (path / RUNS_DIR).glob("*") if (d / "metrics.jsonl").is_file()
                       and not d.name.endswith(".partial"))
        if not inner:
            raise UserError(f"{path}: no metrics.jsonl, nor runs/*/metrics.jsonl; pass a training run's directory "
                            "or an atesd compare or sweep out folder")
        found += [d.resolve() for d in inner]
    return list(dict.fromkeys(found))


def run_labels(directories: Sequence[Path]) -> dict[Path, str]:
    """A name for each run that no other run of `directories` has (each run is its own intercept in the fits): its
    directory's name, or with the out folder it is in when two runs share one (``random-seed0`` of two
    comparisons), or its whole path."""
    def label(directory: Path, depth: int) -> str:
        return "/".join(directory.parts[-depth:]) if depth < len(directory.parts) else str(directory)

    for depth in (1, 3):
        labels = {directory: label(directory, depth) for directory in directories}
        if len(set(labels.values())) == len(labels):
            return labels
    return {directory: str(directory) for directory in directories}


def run_logs(directory: Path, steps: int | None = None, label: str | None = None) -> RunLogs:
    """A run's settings (from its config.yaml), metrics.jsonl and decisions.jsonl rows (with `steps`, only those of
    its first `steps` updates: what a run that stopped there would have logged)."""
    if not (directory / "config.yaml").is_file():
        raise UserError(f"{directory / 'config.yaml'}: missing; the diagnosis reads the run's L, γ, λ_gt and hold "
                        "from it (atesd train writes it): restore it or diagnose another run")
    settings = RunSettings.from_config(label or directory.name, load_run_config(directory / "config.yaml"))
    metrics = read_metrics(directory / "metrics.jsonl")
    if not metrics:
        raise UserError(f"{directory / 'metrics.jsonl'}: no rows; the run logged no update: train it first")
    decisions = read_metrics(directory / "decisions.jsonl")
    if steps is not None:
        metrics = [row for row in metrics if isinstance(row.get("step"), int) and row["step"] <= steps]
        decisions = [row for row in decisions if isinstance(row.get("logged_at"), int) and row["logged_at"] <= steps]
    return settings, metrics, decisions


def why_not(logs: RunLogs) -> str | None:
    """Why a run cannot be diagnosed (its α never varied, or followed training progress), or None."""
    settings, metrics, _ = logs
    alphas = {row["alpha"] for row in metrics if row.get("alpha") is not None}
    if len(alphas) < 2:
        used = f"α = {next(iter(alphas)):g} throughout" if alphas else "no α logged (not a distillation run)"
        return f"its α never varied ({used})"
    if settings.follows_progress:
        return "its α followed a linear schedule in t/T, so α's effect cannot be told from training progress's"
    return None


def diagnose_paths(paths: Sequence[Path], steps: int | None = None) -> Diagnosis:
    """The pooled diagnosis of the runs of `paths` that varied α (of their first `steps` updates, when given). A
    run given by its own directory must have varied α; the runs of an out folder that did not are left out with a
    note."""
    logs, left_out = [], []
    directories = run_directories(paths)
    given = {path.resolve() for path in paths}
    labels = run_labels(directories)
    for directory in directories:
        run = run_logs(directory, steps, labels[directory])
        reason = why_not(run)
        if reason and directory in given:
            raise UserError(f"{directory}: {reason}; diagnose a run with exposure.policy=random or controller")
        if reason:
            left_out.append(labels[directory])
        else:
            logs.append(run)
    if not logs:
        raise UserError(f"{', '.join(str(p) for p in paths)}: no run whose α varied ({len(left_out)} runs with fixed "
                        "or scheduled α); diagnose runs with exposure.policy=random or controller")
    longest = max(max((row["step"] for row in metrics if isinstance(row.get("step"), int)), default=0)
                  for _, metrics, _ in logs)
    if steps is not None and steps >= longest:
        print(f"atesd: warning: --steps {steps} keeps every update of these runs (the longest has {longest}): the "
              "diagnosis is the whole runs'", flush=True)
    diagnosis = diagnose(logs)
    if left_out:
        diagnosis.notes.append(f"left out, their α fixed or scheduled: {', '.join(left_out)}")
    return diagnosis


def run_section(run_dir: Path, command: str) -> str | None:
    """A finished training run's section (its summary.md; `atesd train` prints it): None when its α never varied;
    else the diagnosis of the run alone, also written as its diagnose.md, .csv and .json, or why there is none."""
    try:
        logs = run_logs(run_dir)
        if len({row.get("alpha") for row in logs[1]} - {None}) < 2:
            return None
        reason = why_not(logs)
        if reason:
            raise UserError(reason)
        diagnosis = diagnose([logs])
    except UserError as error:
        return f"## What the reward says about α\n\nNot measured: {error}\n"
    write_diagnosis(diagnosis, run_dir, command)
    return diagnosis_markdown(diagnosis)


def write_diagnosis(diagnosis: Diagnosis, out: Path, command: str) -> list[Path]:
    """diagnose.md (`diagnosis_markdown` under the command), diagnose.csv (one row per term and table) and
    diagnose.json (the same, with the runs), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    atomic_write_text(paths[0], f"# What the reward says about α\n\nCommand: `{command}`\n\n"
                      + diagnosis_markdown(diagnosis, level=2))
    rows = fit_rows(diagnosis)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(_finite(rows))
    atomic_write_text(paths[1], text.getvalue())
    atomic_write_text(paths[2], json.dumps(_finite({"command": command, "runs": diagnosis.runs, "fits": rows,
                                                    "notes": diagnosis.notes}), indent=1) + "\n")
    return paths


def fit_rows(diagnosis: Diagnosis) -> list[dict[str, Any]]:
    """One row per table and term: n, mean, sd, slope on α, SE, t and the points for t = 2."""
    tables = {"windows": diagnosis.windows, "per_problem": diagnosis.credit,
              "per_problem_within_step": diagnosis.credit_within_step, "alignment": diagnosis.alignment,
              "alignment_within_step": diagnosis.alignment_within_step}
    return [{"table": table, "signal": fit.signal, "n": fit.n, "mean": fit.mean, "sd": fit.sd, "slope": fit.slope,
             "se": fit.se, "t": fit.t, "needed_for_t2": fit.needed, "reason": fit.reason}
            for table, fits in tables.items() for fit in fits]


def diagnosis_markdown(diagnosis: Diagnosis, level: int = 2) -> str:
    """The diagnosis as markdown: the windows' table, exposure per problem's credit, and the runs."""
    heading = "#" * level
    windows = sum(run["windows"] for run in diagnosis.runs)
    parts = [f"{heading} What the reward says about α\n",
             f"{windows} windows of {len(diagnosis.runs)} run{'s' * (len(diagnosis.runs) > 1)}, a window per "
             "decision (the decision's first update and the L after it, the run's own L, γ, λ_gt, H). " + READING,
             fits_table({"": diagnosis.windows}, {**SIGNALS, **EXTRA_SIGNALS}, "windows") + "\n", MECHANICAL + "\n"]
    if diagnosis.alignment:
        parts += [f"{heading}# Each problem's alignment credit on its own α\n",
                  ("One point per problem of each step that logged it (metrics.jsonl's `alignment`, "
                   f"`problem_alpha`), {diagnosis.aligned_per_step:.3g} a step: divide the last column by that for "
                   "steps. c_i is the first-order drop of the probe loss that training on problem i would cause "
                   "(docs/controller.md#signals-with-power). First with one intercept per run and t/T, then with one "
                   "intercept per step: the comparison of exposures on a common state.\n"),
                  fits_table({"per run": diagnosis.alignment, "per step": diagnosis.alignment_within_step},
                             ALIGNMENT_SIGNALS, "problems", label="intercept") + "\n"]
    if diagnosis.credit:
        parts += [f"{heading}# Exposure per problem: each problem's credit on its own α\n",
                  ("One point per credited problem (decisions.jsonl), about "
                  f"{diagnosis.credited_per_step:.3g} a step: divide the last column by that for steps. First with "
                  "one intercept per run and t/T, then with one intercept per step (what the controller's "
                  "advantages, centred within each step, compare).\n"),
                  fits_table({"per run": diagnosis.credit, "per step": diagnosis.credit_within_step},
                             CREDIT_SIGNALS, "problems", label="intercept") + "\n"]
    body = [[run["run"], run["policy"], str(run["H"]), str(run["L"]), f"{run['gamma']:g}", f"{run['lambda_gt']:g}",
             run["signal"], str(run["T"]), str(run["windows"]), f"{run['alpha_min']:.2f}–{run['alpha_max']:.2f}",
             "; ".join(run["checks"])] for run in diagnosis.runs]
    parts.append(markdown(["run", "policy", "H", "L", "γ", "λ_gt", "ℓ", "T", "windows", "α", "checks"], body) + "\n")
    parts += [f"Note: {note}\n" for note in diagnosis.notes]
    return "\n".join(parts)


READING = (
    "Terms: G_lp, G_gt and R as the controller computes them (docs/method.md#reward); G_lp without max(0, ·), the "
    "discounted signed drops of ℓ; the probe NLL drop, before the window minus after its L updates; the rollout "
    "accuracy change, the mean over the L updates after the decision minus the L before. Each is fitted by least "
    "squares on α and t/T with one intercept per run; t = slope / SE; the last column, n · (2 / t)², is how many "
    "windows (decisions) the same slope and noise need for t = 2: compare it with a run's decisions, T / H "
    "(docs/controller.md#what-the-reward-says-about-α).\n")


def fits_table(fits: Mapping[str, Sequence[Fit]], signals: Mapping[str, str], unit: str, label: str = "method") -> str:
    """Rows: each labelled set of fits, one row per term (a leading `label` column when a label is not empty)."""
    labelled = any(fits)
    header = [*([label] if labelled else []), "term", unit, "mean", "sd", "slope on α", "SE", "t", f"{unit} for t = 2"]
    body = []
    for name, group in fits.items():
        for fit in group:
            cells = [signals[fit.signal], str(fit.n), _g(fit.mean), _g(fit.sd)]
            cells += [f"– ({fit.reason})", "–", "–", "–"] if fit.reason else \
                [f"{fit.slope:+.3g}", f"{fit.se:.2g}", f"{fit.t:+.2f}", _count(fit.needed)]
            body.append([*([name] if labelled else []), *cells])
    return markdown(header, body)


def method_diagnoses(runs: Mapping[str, Sequence[Path]]) -> dict[str, Diagnosis]:
    """``{method: its runs' diagnosis, pooled}`` for each method of `runs` (``{method: run directories}``) with a
    run whose α varied apart from training progress; its other runs are left out with a note."""
    diagnoses = {}
    for method, directories in runs.items():
        labels = run_labels([directory.resolve() for directory in directories])
        logs = [run_logs(directory, label=labels[directory.resolve()]) for directory in directories]
        kept = [run for run in logs if why_not(run) is None]
        if kept:
            diagnoses[method] = diagnose(kept)
            left_out = [run[0].name for run in logs if why_not(run) is not None]
            if left_out:
                diagnoses[method].notes.append(f"{method}: left out, α fixed or scheduled: {', '.join(left_out)}")
    return diagnoses


def _g(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.3g}"


def _count(value: float) -> str:
    if not math.isfinite(value):
        return "∞"
    return f"{value:,.0f}" if value < 1e9 else f"{value:.1e}"


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: None in their place."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
