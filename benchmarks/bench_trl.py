"""An OPSD step of atesd against the same step done by TRL's `trl.experimental.sdft.SDFTTrainer`, side by side.

Same model (the embedded default's warm-started Qwen3, loaded by both from its cache directory), same data (the
embedded training problems), same batch (32 prompts, one completion each, one optimizer step per batch, no
gradient accumulation), same rollout (64 new tokens at temperature 1, top_p 1, no top_k, HF ``generate``), same
loss (forward KL over the full vocabulary, no clip; SDFT's ``full_logits`` with ``distillation_alpha=0`` and no
importance-sampling clip), same teacher (the frozen initial weights), AdamW at the same learning rate, float32.

The prompts: SDFT takes the student prompt and builds the teacher prompt as ``{prompt}\\n\\n{privileged_context}``.
Both get atesd's chat-formatted student prompt text, and the privileged context is atesd's teacher message at
α = 1 without the question (reference, answer, transition, instruction), so the teacher prompts hold the same
information at nearly the same length; the table reports both lengths in tokens.

What atesd does that SDFT does not: g_t (the teacher's log-prob of the reference solutions, a
docs/method.md#statistics statistic) and grading the rollouts. Grading is timed inside atesd's step and the
``same work`` column leaves it out; g_t is scored as a second continuation of the teacher prompts the rollouts are
scored after (the prompts run once), so it cannot be timed apart and stays in: ``same work`` is an upper bound of
atesd's time for SDFT's work. The probe NLL is switched off (``train.probe_every`` past the run) for this
comparison. TRL's configs turn gradient (activation) checkpointing on by default, which recomputes the forward in
backward; atesd's embedded recipe does not, so the same-work comparison runs SDFT without it, and the full run
(not ``--quick``) also times SDFT as configured by default.

Both learn at a negligible rate (``--lr``, 1e-10 by default, the least `train.lr` accepts): the two losses
normalise differently (atesd by the step's tokens, SDFT per sequence), so at a real rate the two policies drift
apart and sample completions of different lengths, which is different work; at 1e-10 every step still runs the
optimizer, and both keep sampling from the base model. Times are also reported per 1,000 generated tokens.

atesd runs once per ``--samplers`` value (``rollout.sampler``: atesd's decode loop, the default, and transformers'
generate, the sampler before issue 27; both sample the same tokens), each against the same TRL run. Order: half of
each sampler's steps, TRL's, then the other half of each in reverse order, so that a machine that gets busier or
quieter during the run weighs on all of them. Each run's first `--warmup` steps (in each half) are not timed.
``--quick`` (a smoke run): the tiny embedded model (harness.quick_overrides: 4 prompts of 16 new tokens), one untimed
and two timed steps a side, SDFT without its default checkpointing only.

    pip install -e ".[bench]"   # trl, pinned
    python benchmarks/bench_trl.py --out runs/bench/trl.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import add_common_flags, apply_threads, markdown_table, quick_overrides, timed, write_results

from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.data.templates import chat_prompt, student_message, teacher_message
from atesd.eval.grading import grade
from atesd.experiments.warm_start import embedded_base_model
from atesd.train.recipe import Trainer

GRADING_SECONDS: list[float] = []  # appended to by the grader the trainer is given: each rollout's grading time

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "opsd.yaml"



def atesd_steps(config, count: int, trainer: Trainer | None) -> tuple[Trainer, list[dict]]:
    """`count` OPSD steps of atesd; per step its wall time and that time less grading (which SDFT does not do)."""
    trainer = trainer or Trainer(config, grader=timed(grade, GRADING_SECONDS))
    rows = []
    for _ in range(count):
        GRADING_SECONDS.clear()
        started = time.perf_counter()
        record = trainer.train_step()
        wall = time.perf_counter() - started
        rows.append({"step_s": wall, "same_work_s": wall - sum(GRADING_SECONDS),
                     "generated_tokens": record["generated_tokens"]})
    return trainer, rows


def trl_steps(config, model_dir: Path, problems, steps: int, output_dir: str,
              checkpointing: bool) -> tuple[list[dict], dict]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    templates, model_config = config.templates, config.model
    rows = {"prompt": [], "privileged_context": []}
    for problem in problems:
        rows["prompt"].append(chat_prompt(tokenizer, student_message(problem, templates),
                                          model_config.student_chat_kwargs))
        rows["privileged_context"].append(teacher_message(problem, 1.0, templates).replace(problem.question, "", 1))
    rollout, train = config.rollout, config.train
    args = SDFTConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=1, num_generations=1, max_prompt_length=None,
        max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
        top_k=rollout.top_k, distillation_mode="full_logits", distillation_alpha=0.0, distillation_is_clip=None,
        teacher_model_kind="base", learning_rate=train.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm, seed=config.run.seed, use_cpu=True,
        bf16=False, gradient_checkpointing=checkpointing, report_to="none", save_strategy="no", logging_steps=steps + 1,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = SDFTTrainer(model=str(model_dir), args=args, train_dataset=Dataset.from_dict(rows),
                          processing_class=tokenizer)

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._started = 0.0

        def on_step_begin(self, *args, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self._started)

    clock = StepTimes()
    trainer.add_callback(clock)
    generated: list[int] = []
    generate = trainer._generate

    def counting_generate(prompt_ids):
        prompt_out, completions = generate(prompt_ids)
        generated.append(sum(map(len, completions)))
        return prompt_out, completions

    trainer._generate = counting_generate
    trainer.train()
    teacher_tokens = [len(ids) for ids in trainer._tokenize_prompts(
        [args.teacher_prompt_template.format(prompt=p, privileged_context=c)
         for p, c in zip(rows["prompt"], rows["privileged_context"])])]
    steps_out = [{"step_s": t, "generated_tokens": n} for t, n in zip(clock.times, generated, strict=True)]
    return steps_out, {"teacher_prompt_tokens_mean": statistics.mean(teacher_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, on each side")
    parser.add_argument("--lr", type=float, default=1e-10, help="learning rate of both (see the docstring)")
    parser.add_argument("--samplers", nargs="+", default=["loop", "generate"], choices=["loop", "generate"],
                        help="atesd's rollout.sampler values, each timed against the same TRL run")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 1, min(args.repeats, 2)
    apply_threads(args.threads)
    try:
        import trl
    except ImportError:
        raise SystemExit("bench_trl needs trl: pip install -e '.[bench]'") from None

    steps = args.warmup + args.repeats
    first = steps // 2 + args.warmup
    trainers, atesd_rows = {}, {name: [] for name in args.samplers}
    with tempfile.TemporaryDirectory() as output_dir:
        # --quick: the tiny model and run sizes, the batch in one micro-batch (no accumulation) as in the full run
        quick = [*quick_overrides(True), "train.batch_size=4", "train.micro_batch_size=4"] if args.quick else []
        configs = {name: load_config(CONFIG, [
            *quick, f"run.output_dir={output_dir}", f"run.name=atesd-opsd-{name}", f"rollout.sampler={name}",
            f"train.steps={2 * steps}", f"train.probe_every={10 * steps}", f"train.checkpoint_every={10 * steps}",
            f"train.lr={args.lr}"]) for name in args.samplers}
        config = configs[args.samplers[0]]
        model_dir = embedded_base_model(config)
        problems = embedded_splits(config.data.task, config.data.probe_size)["train"]
        for name in args.samplers:
            trainers[name], rows = atesd_steps(configs[name], first, None)
            atesd_rows[name] += rows[args.warmup:]
        data = problems[: steps * config.train.batch_size]
        trl_rows, trl_info = trl_steps(config, model_dir, data, steps, output_dir + "/trl", checkpointing=False)
        trl_default = None if args.quick else trl_steps(config, model_dir, data, steps, output_dir + "/trl-default",
                                                        checkpointing=True)[0]
        for name in reversed(args.samplers):
            atesd_rows[name] += atesd_steps(configs[name], steps - first + args.warmup, trainers[name])[1][args.warmup:]
        atesd_teacher = statistics.mean(len(trainers[args.samplers[0]].prompts.teacher(p, 1.0))
                                        for p in problems[:256])

    trl_timed = trl_rows[args.warmup:]
    def per_k_tokens(rows: list[dict], key: str = "step_s") -> float:
        return 1000 * sum(r[key] for r in rows) / sum(r["generated_tokens"] for r in rows)

    def atesd_figures(rows: list[dict]) -> dict:
        figures = {"atesd_s_per_k_tokens": per_k_tokens(rows),
                   "atesd_same_work_s_per_k_tokens": per_k_tokens(rows, "same_work_s"),
                   "atesd_step_s": statistics.median(r["step_s"] for r in rows),
                   "atesd_same_work_s": statistics.median(r["same_work_s"] for r in rows),
                   "atesd_generated_tokens": statistics.mean(r["generated_tokens"] for r in rows),
                   "atesd_steps": rows}
        figures["ratio_step"] = figures["atesd_step_s"] / trl_step
        figures["ratio_same_work"] = figures["atesd_same_work_s"] / trl_step
        figures["ratio_per_token"] = figures["atesd_s_per_k_tokens"] / trl_per_k
        figures["ratio_same_work_per_token"] = figures["atesd_same_work_s_per_k_tokens"] / trl_per_k
        return figures

    trl_step, trl_per_k = statistics.median(r["step_s"] for r in trl_timed), per_k_tokens(trl_timed)
    samplers = {name: atesd_figures(rows) for name, rows in atesd_rows.items()}
    result = {
        "trl_version": trl.__version__,
        # The first sampler's figures (rollout.sampler's default, loop) at the top level, each sampler's below.
        **samplers[args.samplers[0]], "samplers": samplers,
        "trl_s_per_k_tokens": trl_per_k,
        "trl_generated_tokens": statistics.mean(r["generated_tokens"] for r in trl_timed),
        "trl_step_s": trl_step,
        "atesd_teacher_prompt_tokens_mean": atesd_teacher, **{f"trl_{k}": v for k, v in trl_info.items()},
        "trl_default_checkpointing_step_s": (statistics.median(r["step_s"] for r in trl_default[args.warmup:])
                                             if trl_default else None),
        "trl_steps": trl_timed,
    }
    print(markdown_table(
        ["rollout.sampler", "atesd step s", "atesd same-work s", f"TRL {trl.__version__} SDFT step s",
         "SDFT with its default checkpointing s", "atesd / TRL", "same work / TRL", "same work / TRL per token",
         "generated tokens (atesd / TRL)", "teacher prompt tokens (atesd / TRL)"],
        [[name, figures["atesd_step_s"], figures["atesd_same_work_s"], trl_step,
          result["trl_default_checkpointing_step_s"], figures["ratio_step"], figures["ratio_same_work"],
          figures["ratio_same_work_per_token"],
          f"{figures['atesd_generated_tokens']:.0f} / {result['trl_generated_tokens']:.0f}",
          f"{atesd_teacher:.0f} / {result['trl_teacher_prompt_tokens_mean']:.0f}"]
         for name, figures in samplers.items()]))
    write_results(args.out, "trl", args, result)


if __name__ == "__main__":
    main()
