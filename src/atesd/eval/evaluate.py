"""Evaluation: sample k completions per problem, grade them, and summarise (docs/method.md#evaluation).

`evaluate` works on any prompt (the student prompt for the model's own accuracy, or the teacher prompt at an
exposure for the reference row of the demo table) and returns one `ProblemResult` per problem, which is what
`summarize` / `summarize_by_bucket` and the per-problem JSON output are made from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from atesd.data.problem import Problem
from atesd.eval.grading import grade
from atesd.eval.metrics import ProblemResult, summarize_by_bucket
from atesd.files import atomic_write_text
from atesd.rollout import RolloutEngine, SamplingParams


def evaluate(problems: Sequence[Problem], prompt_ids: Callable[[Problem], list[int]], engine: RolloutEngine,
             decode: Callable[[list[int]], str], sampling: SamplingParams, num_samples: int, seed: int,
             batch_size: int = 64, description: str = "eval") -> list[ProblemResult]:
    """k samples per problem from `prompt_ids(problem)`, graded against each problem's answer."""
    generator = torch.Generator().manual_seed(seed)
    results: list[ProblemResult] = []
    per_batch = max(1, batch_size // num_samples)
    for start in tqdm(range(0, len(problems), per_batch), desc=description, unit="batch", leave=False):
        chunk = problems[start : start + per_batch]
        prompts = [prompt_ids(p) for p in chunk for _ in range(num_samples)]
        completions = engine.generate(prompts, sampling, generator).completion_ids
        for index, problem in enumerate(chunk):
            texts = [decode(ids) for ids in completions[index * num_samples : (index + 1) * num_samples]]
            results.append(ProblemResult(
                problem_id=problem.id,
                gold=problem.answer,
                completions=texts,
                grades=[grade(text, problem.answer) for text in texts],
                bucket=problem.meta.get("bucket"),
            ))
    return results


def write_results(results: list[ProblemResult], num_samples: int, path: Path,
                  evaluated: dict[str, Any] | None = None) -> dict:
    """Per-problem results and the summary (overall and per bucket) as one JSON file, written atomically, with
    `evaluated` (what was evaluated: model, prompt, seed); returns the summary."""
    summary = summarize_by_bucket(results, num_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**({"evaluated": evaluated} if evaluated else {}), "summary": summary,
                                        "problems": [r.to_json() for r in results]}, indent=1))
    return summary

