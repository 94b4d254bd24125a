"""Evaluating a model on the configured benchmarks, with the student prompt or a teacher prompt at α."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.config import Config
from atesd.data.arithmetic import embedded_splits
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.data.sources import benchmark_key, load_benchmark
from atesd.eval.engines import SampleEngine, hf_sample_engine
from atesd.eval.evaluate import evaluate, write_results
from atesd.eval.grading import check_answer_parses
from atesd.rollout import SamplingParams


def benchmark_problems(config: Config, name: str) -> list[Problem]:
    """A benchmark's problems (the embedded task's test split for ``embedded``), every gold answer checked to
    parse, cut to `eval.max_problems`."""
    if name == "embedded":
        problems = embedded_splits(config.data.task, config.data.probe_size)["test"]
    else:
        problems = load_benchmark(name, check_answer=check_answer_parses)
    return problems[: config.eval.max_problems] if config.eval.max_problems else problems


def results_file(out_dir: Path, label: str, benchmark: str) -> Path:
    """Where `evaluate_model` writes the per-problem results of `label` on `benchmark`."""
    return out_dir / f"{label}-{benchmark_key(benchmark)}.json"


def evaluation_parts(config: Config, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
                     engine: SampleEngine | None = None) -> tuple[PromptBuilder, SampleEngine, SamplingParams]:
    """The prompt builder, sampling engine (`engine`, else HF generate on `model`) and sampling settings
    (``eval.*``) every evaluation uses."""
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    engine = engine or hf_sample_engine(model, tokenizer, config.eval.batch_size)
    sampling = SamplingParams(config.eval.temperature, config.eval.top_p, config.eval.top_k,
                              config.eval.max_new_tokens)
    return prompts, engine, sampling


def evaluate_model(config: Config, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                   label: str, teacher_alpha: float | None = None, engine: SampleEngine | None = None
                   ) -> dict[str, dict]:
    """Evaluate on every configured benchmark; writes ``out_dir/<label>-<benchmark>.json`` and returns
    ``{benchmark: summary_by_bucket}``. With `teacher_alpha`, prompts are teacher prompts at that exposure. The
    samples come from `engine` (`atesd.eval.engines.build_eval_engine`: vLLM, say) when given, else from HF
    generate on `model`."""
    prompts, engine, sampling = evaluation_parts(config, model, tokenizer, engine)

    def prompt_ids(problem: Problem) -> list[int]:
        return prompts.student(problem) if teacher_alpha is None else prompts.teacher(problem, teacher_alpha)

    summaries = {}
    for name in config.eval.benchmarks:
        results = evaluate(benchmark_problems(config, name), prompt_ids, engine,
                           lambda ids: tokenizer.decode(ids, skip_special_tokens=True), sampling,
                           config.eval.num_samples, seed=config.run.seed, batch_size=config.eval.batch_size,
                           description=f"eval {label} on {name}")
        summaries[name] = write_results(results, config.eval.num_samples, results_file(out_dir, label, name))
    return summaries
