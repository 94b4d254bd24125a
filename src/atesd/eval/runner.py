"""Evaluating a model on the configured benchmarks, with the student prompt or a teacher prompt at α."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

from transformers import PreTrainedTokenizerBase

from atesd.config import Config
from atesd.data import reasoning_gym
from atesd.data.arithmetic import embedded_splits
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.data.sources import benchmark_key, load_benchmark
from atesd.errors import UserError
from atesd.eval.engines import SampleEngine, hf_sample_engine
from atesd.eval.evaluate import evaluate, write_results
from atesd.eval.grading import check_answer_parses, grader_for
from atesd.eval.metrics import combine_seeds
from atesd.files import atomic_write_text
from atesd.models.causal_lm import CausalLM
from atesd.rollout import SamplingParams

logger = logging.getLogger(__name__)


def benchmark_problems(config: Config, name: str) -> list[Problem]:
    """A benchmark's problems (the embedded task's test split for ``embedded``, the held-out problems of
    ``data.reasoning_gym`` for ``reasoning-gym``), every gold answer checked to parse, cut to `eval.max_problems`."""
    if name == "embedded":
        problems = embedded_splits(config.data.task, config.data.probe_size)["test"]
    elif name == "reasoning-gym":
        gym = config.data.reasoning_gym  # the config requires it with this benchmark
        assert gym is not None
        problems = reasoning_gym.benchmark_problems(gym.task, gym.settings, gym.train_size, gym.test_size, gym.seed)
    else:
        problems = load_benchmark(name, check_answer=check_answer_parses)
    return problems[: config.eval.max_problems] if config.eval.max_problems else problems


def results_file(out_dir: Path, label: str, benchmark: str, seed: int | None = None) -> Path:
    """Where `evaluate_model` writes the per-problem results of `label` on `benchmark` (of one `seed`, when the
    evaluation has several)."""
    suffix = "" if seed is None else f"-seed{seed}"
    return out_dir / f"{label}-{benchmark_key(benchmark)}{suffix}.json"


def evaluation_seeds(config: Config) -> list[int]:
    """The seeds the k samples are drawn with: ``run.seed`` and the next ``eval.seeds - 1`` integers."""
    return [config.run.seed + index for index in range(config.eval.seeds)]


def evaluation_parts(config: Config, model: CausalLM | None, tokenizer: PreTrainedTokenizerBase,
                     engine: SampleEngine | None = None) -> tuple[PromptBuilder, SampleEngine, SamplingParams]:
    """The prompt builder, sampling engine (`engine`, else HF generate on `model`) and sampling settings
    (``eval.*``) every evaluation uses."""
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    if not engine:  # HF generate on `model`, which a call without an engine gives
        assert model is not None
        engine = hf_sample_engine(model, tokenizer, config.eval.batch_size)
    sampling = SamplingParams(config.eval.temperature, config.eval.top_p, config.eval.top_k,
                              config.eval.max_new_tokens)
    return prompts, engine, sampling


def evaluate_model(config: Config, model: CausalLM | None, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                   label: str, teacher_alpha: float | None = None, engine: SampleEngine | None = None,
                   problems: dict[str, list[Problem]] | None = None, model_name: str | None = None) -> dict[str, dict]:
    """Evaluate on every configured benchmark (`problems` when given, else loaded); returns
    ``{benchmark: summary_by_bucket}``. With `teacher_alpha`, prompts are teacher prompts at that exposure. The
    samples come from `engine` (`atesd.eval.engines.build_eval_engine`: vLLM, say) when given, else from HF
    generate on `model`.

    Writes ``out_dir/<label>-<benchmark>.json``; with ``eval.seeds`` > 1, one ``...-seed<s>.json`` per seed and
    ``...-seeds.json`` with the summary over them (each metric's mean and std, `combine_seeds`). Each file
    records what was evaluated (`model_name`, the teacher's α, the seed); with `model_name`, a file of another
    model's or α's evaluation in its place is refused before any work, never overwritten."""
    seeds = evaluation_seeds(config)
    identity = {"model": model_name, "teacher_alpha": teacher_alpha}
    if model_name is not None:
        for name in config.eval.benchmarks:
            for seed in seeds:
                refuse_other_evaluation(results_file(out_dir, label, name, seed if len(seeds) > 1 else None), identity)
    prompts, engine, sampling = evaluation_parts(config, model, tokenizer, engine)

    def prompt_ids(problem: Problem) -> list[int]:
        return prompts.student(problem) if teacher_alpha is None else prompts.teacher(problem, teacher_alpha)

    k = config.eval.num_samples
    summaries = {}
    for name in config.eval.benchmarks:
        chosen = within_context(problems[name] if problems is not None else benchmark_problems(config, name),
                                prompt_ids, engine.context_length, config, name)
        per_seed = []
        for seed in seeds:
            # decode gives one sequence's text (transformers annotates it str | list[str], for batches too)
            results = evaluate(chosen, prompt_ids, engine,
                               lambda ids: cast(str, tokenizer.decode(ids, skip_special_tokens=True)),
                               sampling, k, seed=seed, batch_size=config.eval.batch_size,
                               grader=grader_for(config.data.answer),
                               description=f"eval {label} on {name}" + (f" (seed {seed})" if len(seeds) > 1 else ""))
            per_seed.append(write_results(results, k, results_file(out_dir, label, name,
                                                                   seed if len(seeds) > 1 else None),
                                          evaluated={**identity, "benchmark": name, "seed": seed}))
        summaries[name] = per_seed[0] if len(seeds) == 1 else combine_seeds(per_seed)
        if len(seeds) > 1:
            atomic_write_text(out_dir / f"{label}-{benchmark_key(name)}-seeds.json",
                              json.dumps({"seeds": seeds, "summary": summaries[name]}, indent=1))
    return summaries


def within_context(problems: list[Problem], prompt_ids: Callable[[Problem], list[int]], context: int | None,
                   config: Config, benchmark: str) -> list[Problem]:
    """The problems whose prompt and ``eval.max_new_tokens`` fit the model's `context`, checked before any
    forward (a problem past the context would be scored on positions the model does not have, or ask for an
    allocation that fails). One that does not is an error naming it, or with ``data.skip_invalid_rows`` left
    out and counted, as in training."""
    if context is None:
        logger.warning("%s: the model does not say how long its context is; lengths are not checked", benchmark)
        return problems
    budget = context - config.eval.max_new_tokens
    kept, skipped = [], []
    for problem in problems:
        length = len(prompt_ids(problem))
        if length <= budget:
            kept.append(problem)
        elif config.data.skip_invalid_rows:
            skipped.append(problem.id)
        else:
            raise UserError(f"{benchmark}: problem {problem.id!r} has a prompt of {length} tokens, and with "
                            f"eval.max_new_tokens={config.eval.max_new_tokens} it does not fit the model's context "
                            f"of {context}: lower eval.max_new_tokens, or set data.skip_invalid_rows to leave such "
                            "problems out")
    if skipped:
        logger.warning("%s: left out %d of %d problems longer than the model's context of %d tokens with "
                       "eval.max_new_tokens=%d (the first: %r)", benchmark, len(skipped), len(problems), context,
                       config.eval.max_new_tokens, skipped[0])
    if not kept:
        raise UserError(f"{benchmark}: no problem fits the model's context of {context} tokens with "
                        f"eval.max_new_tokens={config.eval.max_new_tokens}: lower eval.max_new_tokens")
    return kept


def refuse_other_evaluation(path: Path, identity: dict) -> None:
    """A `UserError` when `path` holds the results of another model or teacher α than `identity`'s (a rerun of
    the same evaluation replaces its files; a file that cannot be read is replaced too)."""
    try:
        recorded = json.loads(path.read_text()).get("evaluated", {})
    except (OSError, ValueError, AttributeError):
        return
    other = {key: recorded[key] for key in identity if key in recorded and recorded[key] != identity[key]}
    if other:
        raise UserError(f"{path} holds the evaluation of {', '.join(f'{k} {v}' for k, v in other.items())}, not "
                        f"{', '.join(f'{k} {identity[k]}' for k in other)}: pass another --out, or remove that file")


def summary_rows(step: int, summaries: dict[str, dict], k: int) -> list[dict]:
    """One row per benchmark of an evaluation at training `step`: its metrics over all problems (with their std
    over seeds when there were several), for ``eval_along_training.jsonl`` and the checkpoints' table."""
    rows = []
    for benchmark, by_bucket in summaries.items():
        overall = by_bucket["all"]
        rows.append({"step": step, "benchmark": benchmark, "k": k, "seeds": overall.get("seeds", 1),
                     **{key: value for key, value in overall.items() if key != "seeds"}})
    return rows
