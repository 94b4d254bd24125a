"""`atesd testbed`: the spread of the embedded base model over warm-start seeds.

For each of ``--base-models`` N warm-start seeds (``model.embedded.seed`` = 0 … N−1, the base models of
``atesd compare --base-models N``) the base model is built (or taken from the cache),
its health check is run, and the student and the teacher at α = 1 are evaluated on the held-out test problems
(``eval.*``: Average@k per difficulty bucket). Outputs in the out folder: ``testbed.csv`` (one row per seed),
``testbed.md`` (the table and the command) and ``seeds/seed<N>.json``; a seed whose JSON exists is not redone,
so a killed run continues where it stopped. ``--jobs`` runs seeds in parallel processes of one thread each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from atesd.config import load_config
from atesd.experiments.guards import check_counts, guard_settings, read_json
from atesd.experiments.runs import parallel_map
from atesd.experiments.tables import markdown, percent, write_csv
from atesd.files import atomic_write_text


def run_testbed(config_path: Path, overrides: list[str], base_models: int, out: Path, jobs: int,
                command: str) -> list[Path]:
    """Measure the embedded base models of warm-start seeds 0 … `base_models`−1 (those not measured yet) and
    write the tables; returns the files."""
    check_counts(base_models=base_models, jobs=jobs)
    config = load_config(config_path, overrides)  # a bad override fails before any warm start
    # What a seed's measurement depends on: a folder measured with other settings is refused, not reused.
    guard_settings(out / SETTINGS_FILE, {"config": str(config_path.resolve()), "overrides": list(overrides),
                                         "resolved": config.model_dump(mode="json", exclude={"run"})})
    (out / "seeds").mkdir(parents=True, exist_ok=True)
    todo = [seed for seed in range(base_models) if not seed_file(out, seed).is_file()]
    for seed in parallel_map(measure_seed, [(config_path, overrides, seed, out) for seed in todo], jobs):
        print(f"warm-start seed {seed} done", flush=True)
    rows = [read_json(seed_file(out, seed)) for seed in range(base_models)]
    return write_tables(rows, out, command)


SETTINGS_FILE = "testbed.json"


def seed_file(out: Path, seed: int) -> Path:
    return out / "seeds" / f"seed{seed}.json"


def measure_seed(task: tuple[Path, list[str], int, Path]) -> int:
    """Warm-start seed `seed` (unless cached), its health verdict, and its full evaluation; writes its JSON."""
    from atesd.eval.runner import evaluate_model
    from atesd.experiments.health import check_health, load_health, save_health
    from atesd.experiments.warm_start import embedded_base_model
    from atesd.models.loading import load_model_and_tokenizer

    config_path, overrides, seed, out = task
    config = load_config(config_path, [*overrides, f"model.embedded.seed={seed}"])
    unchecked = config.model_copy(deep=True)
    unchecked.model.embedded.health_check = False  # measured and reported here, never refused
    started = time.perf_counter()
    model_dir = embedded_base_model(unchecked)
    built_seconds = time.perf_counter() - started
    model, tokenizer = load_model_and_tokenizer(config, str(model_dir))
    health = load_health(model_dir)
    if health is None or not health.matches(config):
        health = check_health(config, model, tokenizer)
        save_health(health, model_dir)
    evaluations = out / "seeds" / f"seed{seed}"
    student = evaluate_model(config, model, tokenizer, evaluations, "student")["embedded"]
    teacher = evaluate_model(config, model, tokenizer, evaluations, "teacher", teacher_alpha=1.0)["embedded"]
    k = config.eval.num_samples
    row = {
        "seed": seed,
        "model_dir": str(model_dir),
        "warm_start_seconds": built_seconds,  # about 0 when the model came from the cache
        "student": student["all"][f"average@{k}"],
        "teacher": teacher["all"][f"average@{k}"],
        "buckets": {bucket: {"student": student[bucket][f"average@{k}"], "teacher": teacher[bucket][f"average@{k}"]}
                    for bucket in student if bucket != "all"},
        "health": {"student": health.student, "teacher": health.teacher, "healthy": health.healthy,
                   "problems": health.problems_found},
        "k": k,
    }
    atomic_write_text(seed_file(out, seed), json.dumps(row, indent=1))
    return seed


def write_tables(rows: list[dict[str, Any]], out: Path, command: str) -> list[Path]:
    buckets = sorted({bucket for row in rows for bucket in row["buckets"]}, key=_bucket_order)
    k = rows[0]["k"]
    header = ["seed", f"student Average@{k}", "teacher α=1", "gap",
              *(f"{bucket} s / t" for bucket in buckets), "health check (s / t)", "verdict", "warm start s"]
    body = []
    for row in rows:
        health = row["health"]
        body.append([str(row["seed"]), percent(row["student"]), percent(row["teacher"]),
                     percent(row["teacher"] - row["student"]),
                     *(f"{percent(row['buckets'][b]['student'])} / {percent(row['buckets'][b]['teacher'])}"
                       for b in buckets),
                     f"{percent(health['student'])} / {percent(health['teacher'])}",
                     "in band" if health["healthy"] else "OUT: " + "; ".join(health["problems"]),
                     f"{row['warm_start_seconds']:.0f}"])
    healthy = sum(row["health"]["healthy"] for row in rows)
    students = [row["student"] for row in rows]
    gaps = [row["teacher"] - row["student"] for row in rows]
    summary = (f"{healthy}/{len(rows)} seeds in band; student {min(students):.1%}–{max(students):.1%} "
               f"(mean {sum(students) / len(students):.1%}); teacher lead {min(gaps):+.1%}–{max(gaps):+.1%}")
    csv_path, md_path = out / "testbed.csv", out / "testbed.md"
    write_csv([{"seed": row["seed"], "student": row["student"], "teacher": row["teacher"],
                **{f"{b}_{side}": row["buckets"][b][side] for b in buckets for side in ("student", "teacher")},
                "health_student": row["health"]["student"], "health_teacher": row["health"]["teacher"],
                "healthy": row["health"]["healthy"], "warm_start_seconds": row["warm_start_seconds"]}
               for row in rows], csv_path)
    atomic_write_text(md_path, f"# Warm-start seeds\n\nCommand: `{command}`\n\n{markdown(header, body)}\n\n{summary}\n")
    print(markdown(header, body) + "\n" + summary)
    return [csv_path, md_path]


def _bucket_order(bucket: str) -> tuple[int, str]:
    number = bucket.split("=")[-1]
    return (int(number), bucket) if number.isdigit() else (10**9, bucket)
