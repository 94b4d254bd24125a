"""Evaluation along training: a run's saved checkpoints evaluated afterwards (``atesd eval --checkpoints RUN``),
and the report of an evaluation along training, from those rows or from ``eval.every``'s
(``<run>/eval_along_training.jsonl``).

The report gives the **last** checkpoint (what the run produced) and the **best checkpoint per benchmark**,
each in a table of its own and labelled, never mixed. The best is chosen on the benchmark's own problems, so it
is an optimistic figure, not a held-out one; it is how OPSD's Table 2 (which ATESD's copies as its baseline) was
made: steps 25, 50 and 75 for Qwen3-4B (OPSD issue #11). docs/reproducing.md says how to compare honestly.

With ``eval.engine: vllm`` one vLLM engine serves them all: it starts on the base model and takes each checkpoint's
weights (LoRA merged) in turn. The base model is evaluated as step 0 (LoRA adapters fresh, so disabled in effect;
full fine-tuning: the starting weights). Checkpoints hold only the trained parameters (`train.checkpoint`); each is
loaded onto the same base model in turn. Only the checkpoints a run kept are there (``train.keep_checkpoints``, with
``train.checkpoint_every``): keep more of them to evaluate along a run afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atesd.config import Config
from atesd.errors import UserError
from atesd.eval.engines import reloadable_eval_engine
from atesd.eval.runner import evaluate_model, summary_rows
from atesd.experiments.tables import markdown, seeds_cell
from atesd.files import atomic_write_text
from atesd.models.loading import load_training_model
from atesd.train.along_training import EVAL_LOG
from atesd.train.base_model import base_model_path
from atesd.train.checkpoint import checkpoint_step, checkpoints, read_checkpoint_weights
from atesd.train.metrics import read_metrics

CHECKPOINT_ROWS = "checkpoints.jsonl"


def evaluate_checkpoints(config: Config, run_dir: Path, out_dir: Path) -> list[dict[str, Any]]:
    """Evaluate the base model (step 0) and every checkpoint of `run_dir`, oldest first, with ``eval.*``; the
    per-problem results go under ``out_dir/step-NNNNNNN/`` and the rows to ``out_dir/checkpoints.jsonl``."""
    saved = sorted(checkpoints(run_dir), key=lambda path: path.name)
    if not saved:
        raise UserError(f"{run_dir} has no checkpoints (checkpoints/step-*): nothing to evaluate along training")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_training_model(config, base_model_path(config))
    engine = reloadable_eval_engine(config, base_model_path(config), tokenizer) if config.eval.engine == "vllm" \
        else None
    trained = {name: parameter.shape for name, parameter in model.named_parameters() if parameter.requires_grad}
    rows: list[dict[str, Any]] = []
    for step, directory in [(0, None)] + [(checkpoint_step(path), path) for path in saved]:
        if directory is not None:
            model.load_state_dict(read_checkpoint_weights(directory, trained), strict=False)
            if engine is not None:
                engine.load_weights(model)
        summaries = evaluate_model(config, model, tokenizer, out_dir / f"step-{step:07d}", "student",
                                   engine=engine, model_name=str(directory or base_model_path(config)))
        rows += summary_rows(step, summaries, config.eval.num_samples)
        atomic_write_text(out_dir / CHECKPOINT_ROWS, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def along_training_report(rows: list[dict[str, Any]], title: str) -> str:
    """Markdown: the last checkpoint, the best per benchmark (labelled as selected on the benchmark), and every
    evaluation; Average@k with its std over seeds when there were several. Only the evaluations at the latest
    ``eval.num_samples`` are compared (a resume may change it); the others are counted in a note."""
    k = rows[-1]["k"]
    earlier = len(rows)
    rows = [row for row in rows if row["k"] == k]
    earlier -= len(rows)
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in rows))
    by_key = {(row["step"], row["benchmark"]): row for row in rows}  # a redone evaluation replaces the older
    steps = sorted({step for step, _ in by_key})
    last = steps[-1]
    seeds = max(row.get("seeds", 1) for row in rows)
    spread = f", ± std over {seeds} seeds" if seeds > 1 else ""
    lines = [f"# {title}\n", f"Average@{k}, Pass@{k} and Maj@{k} in %{spread}; step 0 is the base model.\n",
             f"## Last checkpoint (step {last})\n",
             "What the run produced: the figure to report.\n",
             markdown(["benchmark", *(f"{metric}@{k}" for metric in ("Average", "Pass", "Maj"))],
                      [[name, *(seeds_cell(by_key.get((last, name)), f"{metric}@{k}")
                                for metric in ("average", "pass", "maj"))]
                       for name in benchmarks]),
             "\n## Best checkpoint per benchmark (selected on the benchmark itself)\n",
             ("Each benchmark's best step, chosen on that benchmark's own problems: an optimistic figure, not a "
              "held-out one (how OPSD's Table 2 was made). Compare it only with figures selected the same way.\n")]
    best = []
    for name in benchmarks:
        evaluated = [by_key[(step, name)] for step in steps if (step, name) in by_key]
        top = max(evaluated, key=lambda row: row[f"average@{k}"])
        best.append([name, str(top["step"]), seeds_cell(top, f"average@{k}"),
                     f"{100 * (top[f'average@{k}'] - by_key.get((last, name), top)[f'average@{k}']):+.1f}"])
    lines.append(markdown(["benchmark", "best step", f"Average@{k}", "over the last checkpoint"], best))
    if earlier:
        lines.append(f"\n{earlier} evaluation{'s' * (earlier > 1)} with another number of samples (before a resume "
                     "changed eval.num_samples) left out: Average@k of two k do not compare.\n")
    lines += ["\n## Every evaluation\n",
              markdown(["step", *benchmarks], [[str(step), *(seeds_cell(by_key.get((step, name)), f"average@{k}")
                                                             for name in benchmarks)] for step in steps]), ""]
    return "\n".join(lines)


def write_along_training_report(rows: list[dict[str, Any]], path: Path, title: str) -> str:
    """The report of `rows` written to `path` (markdown); returns it."""
    text = along_training_report(rows, title)
    atomic_write_text(path, text)
    return text


def along_training_section(run_dir: Path) -> str | None:
    """The report of a run's ``eval.every`` evaluations (``eval_along_training.md``), or None without any."""
    rows = read_metrics(run_dir / EVAL_LOG)
    if not rows:
        return None
    return write_along_training_report(rows, run_dir / "eval_along_training.md",
                                       f"{run_dir.name}: evaluation along training")
