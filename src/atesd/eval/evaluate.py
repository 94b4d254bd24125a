"""Evaluation: sample k completions per problem, grade them, and summarise (docs/method.md#evaluation).

`evaluate` samples with any `atesd.eval.engines.SampleEngine` (HF generate or vLLM) from any prompt (the student
prompt for the model's own accuracy, or the teacher prompt at an exposure for the reference row of the demo
table) and returns one `ProblemResult` per problem, which is what `summarize` / `summarize_by_bucket` and the
per-problem JSON output are made from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from atesd.data.problem import Problem
from atesd.eval.engines import SampleEngine
from atesd.eval.grading import GradeResult, grade
from atesd.eval.metrics import ProblemResult, summarize_by_bucket
from atesd.files import atomic_write_text
from atesd.rollout import SamplingParams


def evaluate(problems: Sequence[Problem], prompt_ids: Callable[[Problem], list[int]], engine: SampleEngine,
             decode: Callable[[list[int]], str], sampling: SamplingParams, num_samples: int, seed: int,
             batch_size: int = 64, description: str = "eval",
             grader: Callable[[str, str], GradeResult] = grade) -> list[ProblemResult]:
    """k samples per problem from `prompt_ids(problem)`, graded against each problem's answer by `grader`. An engine
    that schedules itself (vLLM) gets every problem at once, each with its own seed (`problem_seeds`); another (HF
    generate) gets `batch_size` prompts x samples per call, its RNG drawn from one seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    seeds = problem_seeds(seed, len(problems))
    per_batch = max(1, len(problems) if engine.schedules_itself else batch_size // num_samples)
    results: list[ProblemResult] = []
    for start in tqdm(range(0, len(problems), per_batch), desc=description, unit="batch", leave=False):
        chunk = problems[start : start + per_batch]
        samples = engine.generate_samples([prompt_ids(p) for p in chunk], num_samples, sampling,
                                          seeds[start : start + len(chunk)], generator)
        for problem, completions in zip(chunk, samples, strict=True):
            texts = [decode(ids) for ids in completions]
            results.append(ProblemResult(
                problem_id=problem.id,
                gold=problem.answer,
                completions=texts,
                grades=[grader(text, problem.answer) for text in texts],
                bucket=problem.meta.get("bucket"),
            ))
    return results


def problem_seeds(seed: int, count: int) -> list[int]:
    """Each problem's sampling seed, from the evaluation's seed and the problem's index alone (not from how
    problems are batched), spread over 31 bits: vLLM seeds a request's i-th sample with ``seed + i``, so
    consecutive seeds would make neighbouring problems share random streams."""
    return [int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "big") >> 1
            for index in range(count)]


def write_results(results: list[ProblemResult], num_samples: int, path: Path,
                  evaluated: dict[str, Any] | None = None) -> dict:
    """Per-problem results and the summary (overall and per bucket) as one JSON file, written atomically, with
    `evaluated` (what was evaluated: model, prompt, seed); returns the summary."""
    summary = summarize_by_bucket(results, num_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**({"evaluated": evaluated} if evaluated else {}), "summary": summary,
                                        "problems": [r.to_json() for r in results]}, indent=1))
    return summary

