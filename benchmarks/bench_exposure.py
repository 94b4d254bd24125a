"""Step-time cost of ATESD, exposure per problem and the peers' methods over fixed exposure α = 1 (OPSD) on the
embedded default, and where it goes.

Variants of ``configs/embedded/atesd.yaml`` train for the same number of steps from the same cached base model and
seed, one after the other in one process:

- ``opsd-no-probe``: fixed α = 1, the probe set measured only once at the start (the leanest OPSD step);
- ``opsd-g-every-step``: fixed α = 1, probe NLL and g_t (the teacher's reference log-prob) at every step: what
  an OPSD step cost before g_t was measured only where it is used (``train.teacher_ref_logp_every=1``);
- ``opsd``: fixed α = 1 at the defaults: probe NLL after every update, g_t every 10 steps for the log;
- ``atesd``: the controller, probe NLL and g_t at every step (its reward needs both);
- ``atesd-per-problem``: exposure per problem (docs/method.md#exposure-per-problem): as ``atesd``, plus the
  reference NLLs of the credited problems (8 of this step's, 8 of L steps ago) under the student prompt;
- ``adaback``, ``seele``, ``paint``: the peers' exposure rules per problem (docs/method.md#the-peers-rules) on
  OPSD's settings;
- ``ar-opd``: OPSD with AR-OPD's anchored-residual teacher: one more teacher forward, after the anchor's prompts;
- ``agreement-gate``, ``entropy-gate``: the per-token teachers (docs/method.md#exposure-per-token): one more teacher
  forward, after the second view's prompts, and the gate computed on every loss chunk.

A short run on the embedded task's 4,000 problems never brings a problem back, and AdaBack's and SEELE's work grows
with the problems that come back (SEELE fits a curve per problem with enough attempts). So the rules' own cost per
step is also timed apart, at steady state: 32 problems that all come back every step, after 10 visits each, when
every SEELE decision fits a curve of its own (`rule_decision_ms`).
- ``atesd-style``: the controller with the style probe's NLL as its progress signal (ours,
  docs/controller.md#signals-with-power): a forward over the style probe after every update;
- ``atesd-alignment``: exposure per problem credited with each problem's alignment on the contrast probe (ours,
  same page): one student forward over the step's rollouts a small step along the probe's gradient, and that
  gradient (backwards over the style probe's right and wrong solutions) every 10 steps;
  ``atesd-alignment-every-step`` refreshes it every step.

Per variant it reports the mean ± std wall time of a step (after `--warmup` steps), and inside the step the
time of the probe NLL, of the teacher's scoring (the distillation targets and, when measured, g_t: one pass over
the teacher prompts, two continuations) and of the exposure policy itself (choosing α, its own measurements,
observing, REINFORCE updates). The overheads are step times against each OPSD variant. Teacher prompts are
shorter at α < 1, so ATESD's steps also score fewer teacher tokens: the table shows teacher prompt tokens per
step so that effect can be told apart from the controller's cost.

    python benchmarks/bench_exposure.py --steps 30 --threads 1 --out runs/bench_exposure.json

``--quick`` (a smoke run) trains every variant for 2 steps (1 timed) on the tiny embedded model
(harness.quick_overrides); that model solves no problem, so the variants with the style probe grade by a stand-in
that passes half the completions (`half_right`).

Not a test: nothing is asserted; it prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from harness import quick_overrides

import atesd.experiments  # noqa: F401  (registers the embedded testbed's model)
from atesd.config import load_config
from atesd.eval.grading import grader_for
from atesd.exposure import REGISTRY, ProblemView, build_exposure_policy
from atesd.exposure.rules import ProblemRule
from atesd.train.recipe import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
OPSD = ["method=opsd", "exposure.policy=fixed", "exposure.alpha=1.0"]
VARIANTS = {
    "opsd-no-probe": [*OPSD, "train.probe_every=1000000"],
    "opsd-g-every-step": [*OPSD, "train.teacher_ref_logp_every=1"],
    "opsd": OPSD,
    "atesd": [],
    "atesd-per-problem": ["exposure.per_problem=true"],
    "adaback": ["method=opsd", "exposure.policy=adaback"],
    "seele": ["method=opsd", "exposure.policy=seele"],
    "paint": ["method=opsd", "exposure.policy=paint"],
    "ar-opd": [*OPSD, "teacher.anchored_residual={}"],
    "agreement-gate": ["method=opsd", "exposure.policy=agreement_gate"],
    "entropy-gate": ["method=opsd", "exposure.policy=entropy_gate"],
    "atesd-style": ["exposure.controller.progress_signal=style_nll"],
    "atesd-alignment": ["exposure.per_problem=true", "exposure.controller.credit=alignment",
                        "exposure.controller.alignment_probe=contrast"],
    "atesd-alignment-every-step": ["exposure.per_problem=true", "exposure.controller.credit=alignment",
                                   "exposure.controller.alignment_probe=contrast",
                                   "exposure.controller.alignment_refresh=1"],
}
# The rules per problem among the registered exposure policies.
RULES = [name for name, settings in REGISTRY.items() if isinstance(settings().build(1, 0), ProblemRule)]
REFERENCE = ("= 14", "= 22", "= 25", "= 23")  # an embedded 'values' reference, for PAINT's overlap


def half_right(grade):
    """`grade` with its verdict replaced by whether the completion's length is even (as in
    tests/test_signals_training.py): --quick's tiny model solves no problem, and the style probe holds the base
    model's right solutions (the contrast probe its wrong ones too)."""
    return lambda text, gold: dataclasses.replace(grade(text, gold), correct=len(text) % 2 == 0)


def run_variant(name: str, overrides: list[str], args: argparse.Namespace, output_dir: str) -> dict:
    config = load_config(REPO_ROOT / "configs/embedded/atesd.yaml", [
        *quick_overrides(args.quick), *overrides, f"run.output_dir={output_dir}", f"run.name={name}",
        f"train.steps={args.steps}", f"run.seed={args.seed}", f"train.checkpoint_every={args.steps}"])
    style_probe = args.quick and config.exposure.uses_style_probe
    trainer = Trainer(config, grader=half_right(grader_for(config.data.answer)) if style_probe else None)
    original_teacher = trainer.prompts.teacher
    teacher_tokens: list[int] = []

    def counting_teacher(problem, alpha):
        ids = original_teacher(problem, alpha)
        teacher_tokens.append(len(ids))
        return ids

    trainer.prompts.teacher = counting_teacher
    trainer.signals.start(trainer.sampler)  # what train() does before its first step
    trainer.last_probe_nll = trainer.probe_nll()
    step_times, per_step = [], defaultdict(list)
    for step in range(args.steps):
        tokens_before = len(teacher_tokens)
        record = trainer.train_step()
        if step >= args.warmup:
            step_times.append(record["step_time"])
            for part in ("probe", "teacher", "exposure"):
                per_step[part].append(record[f"{part}_time"])
            per_step["teacher_prompt_tokens"].append(sum(teacher_tokens[tokens_before:]))
    return {
        "variant": name,
        "steps_timed": len(step_times),
        "step_s_mean": statistics.mean(step_times),
        "step_s_std": statistics.stdev(step_times) if len(step_times) > 1 else 0.0,
        **{f"{key}_s_mean": statistics.mean(values) for key, values in per_step.items()
           if key != "teacher_prompt_tokens"},
        "teacher_prompt_tokens_mean": statistics.mean(per_step["teacher_prompt_tokens"]),
    }


def rule_decision_ms(name: str, problems: int = 32, warm_visits: int = 10, timed_steps: int = 20) -> float:
    """The milliseconds a rule takes to decide a step of `problems` that all come back every step (its steady
    state), after `warm_visits` visits each; a problem is right at a visit with probability 0.1 + 0.9 σ(8 (α − 0.6))
    of its last α."""
    policy = build_exposure_policy(load_config(None, [f"exposure.policy={name}"]).exposure, 1000, 0)
    rng, last = np.random.default_rng(0), [0.5] * problems
    elapsed = 0.0
    for step in range(warm_visits + timed_steps):
        views = [ProblemView(key, bool(rng.random() < 0.1 + 0.9 / (1 + np.exp(-8 * (last[key] - 0.6)))), 0.5, 4,
                             None, "6+8=14\n14+8=22\n22+3=26", REFERENCE) for key in range(problems)]
        started = time.perf_counter()
        last = policy.alphas(step, views)
        elapsed += time.perf_counter() - started if step >= warm_visits else 0.0
        policy.drain_decisions()
    return elapsed / timed_steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (run.seed) of every run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: every variant for 2 steps on the tiny "
                        "embedded model")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    with tempfile.TemporaryDirectory() as output_dir:
        for name in args.variants:
            results.append(run_variant(name, VARIANTS[name], args, output_dir))
            print(f"{name}: {results[-1]['step_s_mean'] * 1000:.0f} ms/step", flush=True)

    baseline = {row["variant"]: row["step_s_mean"] for row in results}
    header = ("| variant | step ms (± std) | probe ms | teacher ms | exposure policy ms | teacher prompt tokens/step | "
              "vs opsd-no-probe | vs opsd |")
    lines = [header, "|" + "---|" * 8]
    for row in results:
        ratios = [f"{row['step_s_mean'] / baseline[b]:.3f}×" if b in baseline else "–"
                  for b in ("opsd-no-probe", "opsd")]
        lines.append(f"| {row['variant']} | {row['step_s_mean'] * 1000:.0f} (± {row['step_s_std'] * 1000:.0f}) | "
                     f"{row.get('probe_s_mean', 0) * 1000:.1f} | {row.get('teacher_s_mean', 0) * 1000:.1f} | "
                     f"{row.get('exposure_s_mean', 0) * 1000:.2f} | {row['teacher_prompt_tokens_mean']:.0f} | "
                     f"{ratios[0]} | {ratios[1]} |")
    print("\n".join(lines))
    steady = {name: rule_decision_ms(name) for name in RULES}
    print("\n| rule | decision ms per step at steady state (32 problems, all back every step) |\n|---|---|")
    print("\n".join(f"| {name} | {ms:.1f} |" for name, ms in steady.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"steps": args.steps, "warmup": args.warmup, "seed": args.seed, "threads": torch.get_num_threads(),
                "torch": torch.__version__}
        args.out.write_text(json.dumps({"meta": meta, "results": results, "rule_decision_ms": steady}, indent=1))


if __name__ == "__main__":
    main()
