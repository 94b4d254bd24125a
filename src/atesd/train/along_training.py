"""Evaluation during training (``eval.every``): the student on the configured benchmarks before the first step,
every ``eval.every`` steps and after the last, with the evaluation settings (``eval.*``, several seeds too).

Each evaluation writes its per-problem results under ``<run>/eval/step-NNNNNNN/`` and one row per benchmark to
``<run>/eval_along_training.jsonl`` (`eval.runner.summary_rows`); `atesd.experiments.along_training` reads them
into the report of the last and the best checkpoint. With ``eval.engine: hf`` it samples from the training model
through HF generate (in eval mode, restoring the RNG it draws from); with ``eval.engine: vllm`` it samples from the
run's colocated vLLM engine (``rollout.engine: vllm``), given the current weights first. Either way it runs on the
main process while the others wait, so a run with ``eval.every`` trains exactly as one without. A resumed run
keeps the rows up to its checkpoint and redoes the later ones. Under FSDP2 the parameters are sharded and generate
would need them gathered on every process: there, evaluate the checkpoints afterwards
(``atesd eval --checkpoints RUN``).
"""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from atesd.config import Config, ConfigError
from atesd.eval.engines import VLLMSampleEngine
from atesd.eval.runner import benchmark_problems, evaluate_model, summary_rows
from atesd.models.causal_lm import CausalLM
from atesd.rollout import RolloutEngine
from atesd.rollout.vllm import VLLMEngine
from atesd.train.distributed import Processes
from atesd.train.metrics import MetricsLogger
from atesd.train.problems import context_limit

EVAL_LOG = "eval_along_training.jsonl"


class AlongTrainingEvaluator:
    """Evaluates `model` (the training model, unwrapped) when `due`; rows go to the run's `EVAL_LOG`."""

    def __init__(self, config: Config, model: CausalLM, tokenizer: PreTrainedTokenizerBase, run_dir: Path,
                 processes: Processes, accelerator: Accelerator, *, resumed_at: int | None, sharded: bool,
                 rollouts: RolloutEngine) -> None:
        if sharded:
            raise ConfigError("eval.every does not run under FSDP2 (generate would need every process's "
                              "parameters gathered): set eval.every=0 and evaluate the saved checkpoints afterwards "
                              "with atesd eval --checkpoints RUN")
        self.engine: VLLMSampleEngine | None = None
        if config.eval.engine == "vllm":  # the config refuses it without rollout.engine: vllm
            assert isinstance(rollouts, VLLMEngine)
            self.engine = VLLMSampleEngine.sharing(rollouts, context_limit(config, model))
        self.rollouts = rollouts
        self.config, self.model, self.tokenizer, self.run_dir = config, model, tokenizer, run_dir
        self.processes = processes
        # Loaded now: a benchmark that cannot be read stops the run before its first step, not at its first eval.
        self.problems = {name: benchmark_problems(config, name) for name in config.eval.benchmarks}
        # A fresh run drops rows a killed attempt left; a resumed one keeps those up to its checkpoint.
        kept = -1 if resumed_at is None else resumed_at
        self.log = MetricsLogger(run_dir / EVAL_LOG, accelerator, keep_before_step=kept, trackers=False)
        self.resumed_at = resumed_at

    def due(self, step: int) -> bool:
        """Whether to evaluate after `step` optimizer steps (0: before training; only when not resumed)."""
        every, total = self.config.eval.every, self.config.train.steps
        if step == 0:
            return self.resumed_at is None
        return step % every == 0 or step == total

    def evaluate(self, step: int) -> None:
        if self.processes.is_main:
            if self.engine is not None:
                self.rollouts.update_weights()
            summaries = evaluate_model(self.config, self.model, self.tokenizer,
                                       self.run_dir / "eval" / f"step-{step:07d}", "student", problems=self.problems,
                                       engine=self.engine, model_name=f"{self.run_dir} at step {step}")
            for row in summary_rows(step, summaries, self.config.eval.num_samples):
                self.log.log(row)
        self.processes.wait_for_everyone()

    def close(self) -> None:
        self.log.close()
