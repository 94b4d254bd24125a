"""The training recipe: on-policy self-distillation with teacher exposure (OPSD, ATESD), and its baselines.

`Trainer` has a named lifecycle: ``setup`` (from the config: problems, model, optimizer, teacher, rollout
engine, exposure policy, run directory, resume), ``train`` (steps, checkpoints) and ``save`` (the final model).
One distillation step, top to bottom in `distillation_step` (docs/method.md):

1. the student prompt holds the question; the student samples one completion per prompt from its current
   weights; each is graded;
2. the exposure policy gives each problem its α (`atesd.exposure`: a batch-level policy one α for all, decided
   on the main process so that every process uses the same; a policy per problem one each, from what the
   problem's rollout showed); the teacher prompt holds the question and the first ⌊α·m⌋ reference segments;
3. the teacher (the same model, teacher weights; `atesd.train.forwards.Teacher`) reads each completion after its
   prompt: its hidden states are the targets (with AR-OPD's anchored residual, mixed with the anchor's); it also
   scores the reference solutions (g_t) when that is wanted;
4. what the exposure policy measures before the update: the reference NLLs its credit needs, and the alignment
   credit's losses at weights moved along the probe gradient (`atesd.train.signals`), both through `step_loss`;
5. the update: `step_loss` per micro-batch, the divergence between the student's and the teacher's per-token
   distributions (`atesd.losses.divergence`), normalised by the completion tokens of the whole step; one optimizer
   step (skipped, and counted, when the loss or gradient is not finite), then the probe NLL;
6. the statistics, combined over processes, are logged and told to the exposure policy, which may finish
   decisions (``decisions.jsonl``) and learn from them (the ATESD controller).

GRPO and SFT (`grpo_step`, `sft_step`, docs/method.md#baselines) run in the same loop with the same rollouts,
update, probe, logging and checkpoints. What the recipe leans on lives beside it: the models' forwards
(`forwards`), the optimizer update (`update`), the processes (`distributed`), the problem order (`problems`), the
run directory and checkpoints (`run_dir`, `checkpoint`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from atesd.config import Config, ConfigError
from atesd.data.problem import Problem
from atesd.data.prompts import PromptBuilder
from atesd.eval.grading import grader_for
from atesd.exposure import ExposurePolicy, ProblemView, build_exposure_policy
from atesd.losses import DivergenceOutput, DivergenceSpec, divergence_from_hidden
from atesd.losses.policy_gradient import clipped_policy_loss, group_advantages, k3_kl, sft_loss, token_weights
from atesd.models.causal_lm import CausalLM
from atesd.models.export import save_final_model
from atesd.models.loading import load_training_model
from atesd.models.teacher import TeacherWeights
from atesd.rollout import SamplingParams, build_rollout_engine
from atesd.train.along_training import AlongTrainingEvaluator
from atesd.train.base_model import base_model_path
from atesd.train.checkpoint import (
    TrainingState,
    read_training_state,
    resume_from_checkpoint,
    save_checkpoint,
    write_training_state,
)
from atesd.train.distributed import Processes, refuse_unsupported_distribution
from atesd.train.forwards import (
    GradedRollouts,
    Grader,
    RolloutSampler,
    StepCost,
    Student,
    Teacher,
    TeacherTargets,
    teacher_mix,
)
from atesd.train.metrics import TRACKERS_DIR, MetricsLogger
from atesd.train.preflight import learning_warnings
from atesd.train.problems import EpochOrder, context_limit, fit_to_context, step_seed, training_problems
from atesd.train.run_dir import RunLock, prepare_run_dir, record_non_finite_stop, run_directory
from atesd.train.sharding import requested_sharding
from atesd.train.signals import ExposureSignals
from atesd.train.update import NonFiniteError, Updater, lr_factor
from atesd.train.versions import write_versions

logger = logging.getLogger(__name__)
LocalStepHook = Callable[[dict[str, Any], dict[str, Any]], None]  # (step record, this process's measurements)


class Trainer:
    """Sets up a run from its config, trains it and saves it. `train()` is the whole job.

    The keyword arguments are seams for experiments and tests: another exposure policy, grader (GRPO's reward
    and the logged rollout accuracy) or divergence function, and a hook that sees each step's record together
    with what this process measured before the processes' numbers were combined.
    """

    def __init__(self, config: Config, *, resume: bool = False, accelerator: Accelerator | None = None,
                 exposure_policy: ExposurePolicy | None = None, grader: Grader | None = None,
                 divergence: Callable[..., Any] = divergence_from_hidden,
                 on_local_step: LocalStepHook | None = None) -> None:
        self.config = config
        self.divergence = divergence
        self.on_local_step = on_local_step
        self.lock: RunLock | None = None
        try:
            # The trackers' files go under the run directory (tensorboard's there, wandb's beside them).
            accelerator = accelerator or Accelerator(log_with=config.run.report_to or None,
                                                     project_dir=str(run_directory(config) / TRACKERS_DIR))
            self.setup(resume, accelerator, exposure_policy, grader or grader_for(config.data.answer))
        except BaseException:
            self.release()
            raise

    # ------------------------------------------------------------------ setup

    def setup(self, resume: bool, accelerator: Accelerator, exposure_policy: ExposurePolicy | None,
              grader: Grader) -> None:
        config = self.config
        self.accelerator = accelerator
        self.sharding = requested_sharding(accelerator)  # FSDP2 (train.sharding), or None: DDP or one process
        self.processes = processes = Processes(accelerator, sharded=self.sharding is not None)
        set_seed(config.run.seed)
        self.run_dir = run_directory(config)
        if config.train.batch_size % processes.count:
            raise ConfigError(f"train.batch_size ({config.train.batch_size}) must be divisible by the number "
                              f"of processes ({processes.count})")
        if processes.is_main:  # the main process owns the run directory (docs/reliability.md)
            self.lock = prepare_run_dir(self.run_dir, config, resume)
            write_versions(self.run_dir)
        processes.wait_for_everyone()

        self.train_problems, self.probe_problems = training_problems(config)
        refuse_unsupported_distribution(accelerator)
        base = base_model_path(config)
        model, self.tokenizer = load_training_model(config, base)
        model.train()
        teacher_weights = None
        if self.sharding is not None:  # the teacher's copy is made whole, then sharded like the student
            teacher_weights = TeacherWeights(model, config.teacher.weights, config.teacher.ema_decay)
            model = self.sharding.shard_student_and_teacher(model, teacher_weights)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
        # The scheduler stays outside accelerate.prepare: our batch size is already global, and a prepared
        # scheduler would step once per process.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config.train))
        # A sharded model is not wrapped by accelerate (train.sharding says why).
        self.model: torch.nn.Module
        self.optimizer: torch.optim.Optimizer
        self.model, self.optimizer = (model, optimizer) if self.sharding else accelerator.prepare(model, optimizer)
        self.updater = Updater(self.model, self.optimizer, scheduler, processes,
                               max_grad_norm=config.train.max_grad_norm,
                               max_consecutive_bad_steps=config.train.max_consecutive_bad_steps,
                               bf16_autocast=config.train.bf16_autocast)
        # Made after prepare, so that a teacher copy (full fine-tuning) sits on the training device too.
        teacher_weights = teacher_weights or TeacherWeights(self.unwrapped, config.teacher.weights,
                                                            config.teacher.ema_decay)
        self.prompts = prompts = PromptBuilder(self.tokenizer, config.templates, config.model.student_chat_kwargs,
                                               config.model.teacher_chat_kwargs)
        # Checked before any tensor is built: a 1 MB reference must not reach a forward (docs/reliability.md).
        context, data = context_limit(config, self.unwrapped), config.data
        self.train_problems, self.probe_problems = (
            fit_to_context(problems, prompts, context, config.rollout.max_new_tokens, data.skip_invalid_rows,
                           data.train) for problems in (self.train_problems, self.probe_problems))
        engine = build_rollout_engine(config, self.unwrapped, self.tokenizer, base,
                                      batch_size=config.train.micro_batch_size,
                                      seed=step_seed(config.run.seed, processes.index))
        if self.sharding is not None:
            engine = self.sharding.rollout_engine(engine, self.unwrapped)
        rollout, train = config.rollout, config.train
        self.sampler = RolloutSampler(engine, self.tokenizer, SamplingParams(rollout.temperature, rollout.top_p,
                                                                             rollout.top_k, rollout.max_new_tokens),
                                      grader)
        forwards = {"pad_token_id": self.tokenizer.pad_token_id, "micro_batch_size": train.micro_batch_size,
                    "chunk_size": config.loss.chunk_size, "bf16_autocast": train.bf16_autocast}
        self.student = Student(self.model, self.unwrapped, prompts, processes, **forwards)
        self.teacher = Teacher(teacher_weights, prompts, processes, mix=teacher_mix(config), **forwards)
        self.signals = ExposureSignals(config, self.student, self.probe_problems, processes.count)
        self.exposure = exposure_policy or build_exposure_policy(config.exposure, config.train.steps,
                                                                 config.run.seed)
        for warning in learning_warnings(config):
            logger.warning("%s", warning)
        if self.exposure.single_process and processes.count > 1:
            raise ConfigError(f"exposure.policy {config.exposure.policy} chooses each problem's alpha, and runs on "
                              "one process for now (each problem's alpha and what the policy learns from it stay "
                              "where it is trained): run without data parallelism, or use a batch-level policy")
        self.order = EpochOrder(len(self.train_problems), config.train.batch_size, config.run.seed)
        loss = config.loss
        self.divergence_spec = DivergenceSpec(kind=loss.divergence, beta=loss.beta, top_k=loss.top_k,
                                              clip=loss.clip, temperature=loss.temperature,
                                              chunk_size=loss.chunk_size)
        self.step = 0  # optimizer steps completed (including skipped ones)
        self.last_probe_nll: float | None = None

        if resume:
            resume_from_checkpoint(self.run_dir, self.load_checkpoint)
        kept = self.step if resume else 0
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", accelerator, keep_before_step=kept,
                                     tracker_config=config.model_dump(mode="json"))
        self.decisions = MetricsLogger(self.run_dir / "decisions.jsonl", accelerator, keep_before_step=kept,
                                       step_key="logged_at", trackers=False)
        self.evaluator = AlongTrainingEvaluator(
            config, self.unwrapped, self.tokenizer, self.run_dir, processes, accelerator,
            resumed_at=self.step if resume else None, sharded=self.sharding is not None,
            rollouts=engine) if config.eval.every else None

    @property
    def unwrapped(self) -> CausalLM:
        # accelerate types unwrap_model as giving any module; it gives the one prepared, load_training_model's
        return cast(CausalLM, self.accelerator.unwrap_model(self.model))

    # ------------------------------------------------------------------ train

    def train(self) -> Path:
        """Train to `train.steps`, checkpointing on the way, then save; returns the run directory."""
        total = self.config.train.steps
        progress = tqdm(total=total, initial=self.step, desc=f"train {self.run_dir.name}", unit="step",
                        disable=not self.processes.is_main)
        try:
            self.signals.start(self.sampler)  # the style probe, when one is used
            if self.last_probe_nll is None:
                self.last_probe_nll = self.probe_nll()
            if self.evaluator is not None and self.step == 0 and self.evaluator.due(0):
                self.evaluator.evaluate(0)
            while self.step < total:
                record = self.train_step()
                self.metrics.log(record)
                for row in self.exposure.drain_decisions():
                    self.decisions.log(row)
                if self.evaluator is not None and self.evaluator.due(self.step):
                    self.evaluator.evaluate(self.step)
                self.updater.stop_if_diverged()  # after logging: the last bad step is in metrics.jsonl
                progress.update(1)
                progress.set_postfix({key: f"{record[key]:.{digits}f}" for key, digits in
                                      (("loss", 4), ("rollout_accuracy", 2), ("alpha", 2)) if key in record})
                if self.step % self.config.train.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
            progress.close()
            # Decisions still waiting for their reward are written once, at the end (a resume drops them again).
            for row in self.exposure.pending_decisions():
                self.decisions.log(row)
            self.save()
        except KeyboardInterrupt:
            progress.close()
            self.accelerator.print(f"\ninterrupted at step {self.step}; the last checkpoint is intact: continue "
                                   "with atesd train --resume, or run the same sweep or compare command again")
            raise
        except NonFiniteError as error:
            if self.processes.is_main:
                record_non_finite_stop(self.run_dir, self.step, str(error))
            raise
        finally:
            progress.close()
            self.metrics.close()
            self.decisions.close()
            if self.evaluator is not None:
                self.evaluator.close()
            self.release()
        return self.run_dir

    def release(self) -> None:
        """Give up the run directory (`train` does when it ends; so does a failed set-up)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def train_step(self) -> dict[str, Any]:
        """One student update of the configured method; returns the step's record."""
        step, config = self.step, self.config
        cost = StepCost()
        torch.manual_seed(step_seed(config.run.seed, step, self.processes.index))
        indices = self.order.local_batch(step, self.processes.index, self.processes.count)
        problems = [self.train_problems[i] for i in indices]
        if config.method == "sft":
            result = self.sft_step(problems, step, cost)
        elif config.method == "grpo":
            result = self.grpo_step(problems, step, cost)
        else:
            result = self.distillation_step(problems, indices, step, cost)
        self.step += 1
        record = {"step": self.step, **result.record, **cost.record(self.processes)}
        if self.on_local_step is not None:
            self.on_local_step(record, result.local)
        return record

    def distillation_step(self, problems: list[Problem], keys: list[int], step: int, cost: StepCost) -> StepResult:
        """OPSD / ATESD: the teacher at α scores the student's rollouts; the student learns its distributions.
        `keys` are the problems' indices in the training set."""
        processes = self.processes
        # 1. the student's rollouts from the question alone, graded
        student_prompts = [self.prompts.student(p) for p in problems]
        rollouts = self.sampler.sample(student_prompts, problems, self.rollout_generator(step), cost)
        completions = rollouts.completion_ids
        # 2. the exposure of each problem: decided on the main process, so that every process uses the same (a
        # policy per problem, which decides from each problem's rollout, runs on one process)
        with cost.timed("exposure"):
            views = self.problem_views(problems, keys, rollouts)
            alphas = processes.decided_by_main(lambda: self.exposure.alphas(step, views))
        # 3. the teacher at α reads each rollout (and the references, when g_t is wanted)
        teacher = self.teacher.targets(problems, alphas, completions, self.measures_teacher_ref_logp(step), cost)
        scale = processes.loss_scale(rollouts.num_tokens)  # sum over the step's tokens / their number

        def step_loss(span: slice) -> DivergenceOutput:
            return self.step_loss(student_prompts[span], completions[span], teacher, span.start, cost)

        # 4. what the exposure policy measures before the update: the alignment credit's perturbed losses (the
        # same step loss at weights moved along the probe gradient), and the reference NLLs a credit per problem needs
        with cost.timed("exposure"):
            if self.signals.aligns:
                self.signals.perturbed(step, self.student.spans(len(problems)), step_loss, completions, scale, cost)
            wanted = self.exposure.nll_wanted(step)
            self.exposure.measured(step, self.student.reference_nlls([self.train_problems[k] for k in wanted], cost),
                                   teacher.reference_logps)
            if hinted := self.exposure.hinted_wanted(step):
                self.exposure.relied(step, self.student.reference_nlls([self.train_problems[k] for k, _ in hinted],
                                                                       cost, [alpha for _, alpha in hinted]))
        # 5. the update: the divergence of the student's distributions from the teacher's, per micro-batch
        outputs = []

        def scaled_loss(span: slice) -> torch.Tensor:
            outputs.append(step_loss(span))
            return outputs[-1].loss_sum * scale

        updated = self.update_and_probe(self.student.spans(len(problems)), scaled_loss, step, cost)
        # 6. the record, told to the exposure policy (which may finish and learn from decisions)
        signals: dict[str, Any] = {}
        if self.signals.aligns:  # the alignment credit, against the update's own forward
            credits, signals = self.signals.credits(per_token(outputs, "per_token_loss"), completions, scale, alphas)
            self.exposure.aligned(step, credits)
        record = {"alpha": mean_alpha(alphas), **distillation_statistics(outputs, processes),
                  "teacher_ref_logp": teacher.reference_logp, **rollouts.record(processes), **updated, **signals}
        with cost.timed("exposure"):
            record.update(self.exposure.observe(step, record))
        return StepResult(record, {"prompts": rollouts.completions.prompt_ids, "correct": rollouts.correct,
                                   "per_token_kl": per_token(outputs, "per_token_kl")})

    def step_loss(self, prompts: list[list[int]], completions: list[list[int]], teacher: TeacherTargets,
                  start: int, cost: StepCost) -> DivergenceOutput:
        """The distillation loss of one micro-batch (the completions from `start` of the step's): the student
        reads each completion after its prompt, against the teacher's targets (AR-OPD's mix included). The update
        and every probe of it (the alignment credit) call this one function."""
        batch = self.student.packed(prompts, completions, cost)
        head, bias = self.student.head()
        return self.divergence(self.student.hidden(batch), teacher.hidden[start], head, teacher.head, batch.targets,
                               self.divergence_spec, bias, teacher.bias, teacher_mix=teacher.mix(start))

    def problem_views(self, problems: list[Problem], keys: list[int], rollouts: GradedRollouts) -> list[ProblemView]:
        """What an exposure policy may read of each problem when it chooses its α: the rollout's grade, length and
        text, and the reference's segments (`keys`: the problems' indices in the training set)."""
        max_new_tokens = self.config.rollout.max_new_tokens
        return [ProblemView(key, correct, len(ids) / max_new_tokens, self.prompts.segments(problem),
                            None if problem.meta.get("bucket") is None else str(problem.meta["bucket"]), text,
                            self.prompts.segment_texts(problem))
                for key, problem, correct, ids, text in zip(keys, problems, rollouts.correct, rollouts.completion_ids,
                                                            rollouts.texts)]

    def grpo_step(self, problems: list[Problem], step: int, cost: StepCost) -> StepResult:
        """GRPO (docs/method.md#grpo): G graded rollouts per prompt, group-normalised advantages, the ratio-clipped
        policy gradient (`atesd.losses.policy_gradient`), optionally a k3 KL to the teacher weights; no teacher
        prompt, no exposure. A process samples whole groups for its own prompts, so group normalisation never needs
        another process."""
        settings, processes, student = self.config.grpo, self.processes, self.student
        group = settings.group_size
        group_problems = [p for p in problems for _ in range(group)]
        prompts = [self.prompts.student(p) for p in group_problems]
        rollouts = self.sampler.sample(prompts, group_problems, self.rollout_generator(step), cost)
        rewards = torch.tensor(rollouts.correct, dtype=torch.float32)
        advantages = group_advantages(rewards, group, settings.scale_rewards, settings.advantage_eps)
        lengths = [len(ids) for ids in rollouts.completion_ids]
        token_advantages = advantages.repeat_interleave(torch.tensor(lengths)).to(processes.device)
        weights = token_weights(lengths, settings.loss_normalization, processes.device)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        units = sum(lengths) if settings.loss_normalization == "token" else len(lengths)
        scale = processes.loss_scale(units)
        totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0}

        def loss_of(span: slice) -> torch.Tensor:
            batch = student.packed(prompts[span], rollouts.completion_ids[span], cost)
            tokens = slice(offsets[span.start], offsets[min(span.stop, len(lengths))])
            logprobs = student.token_logprobs(batch)
            per_token_loss, clipped = clipped_policy_loss(logprobs, logprobs.detach(), token_advantages[tokens],
                                                          settings.clip_epsilon)
            if settings.kl_coef > 0:
                kl = k3_kl(logprobs, self.teacher.token_logprobs(batch, cost))
                per_token_loss = per_token_loss + settings.kl_coef * kl
                totals["kl"] += float(kl.detach().sum())
            loss = (per_token_loss * weights[tokens]).sum()
            totals["loss"] += float(loss.detach())
            totals["clipped"] += float(clipped.sum())
            return loss * scale

        updated = self.update_and_probe(student.spans(len(prompts)), loss_of, step, cost)
        groups = rewards.view(-1, group)
        sums = processes.sums({
            "loss": totals["loss"], "units": float(units), "clipped": totals["clipped"], "kl": totals["kl"],
            "tokens": float(sum(lengths)), "group_std": float(groups.std(dim=1).sum()),
            "groups": float(groups.shape[0]), "flat_groups": float((groups.std(dim=1) == 0).sum())})
        tokens = max(sums["tokens"], 1.0)
        record = {"loss": sums["loss"] / max(sums["units"], 1.0), "reward_std": sums["group_std"] / sums["groups"],
                  "groups_without_signal": sums["flat_groups"] / sums["groups"],
                  "clip_fraction": sums["clipped"] / tokens}
        if settings.kl_coef > 0:
            record["kl_ref"] = sums["kl"] / tokens
        record.update(rollouts.record(processes))
        return StepResult({**record, **updated}, {"prompts": rollouts.completions.prompt_ids,
                                                   "correct": rollouts.correct})

    def sft_step(self, problems: list[Problem], step: int, cost: StepCost) -> StepResult:
        """SFT (docs/method.md#baselines): the NLL of the reference solutions after the student prompt, without
        rollouts."""
        processes, student = self.processes, self.student
        prompts = [self.prompts.student(p) for p in problems]
        solutions = [self.prompts.solution(p) for p in problems]
        num_tokens = sum(len(ids) for ids in solutions)
        scale = processes.loss_scale(num_tokens)
        totals = {"loss": 0.0}

        def loss_of(span: slice) -> torch.Tensor:
            loss = sft_loss(student.token_logprobs(student.packed(prompts[span], solutions[span], cost))).sum()
            totals["loss"] += float(loss.detach())
            return loss * scale

        updated = self.update_and_probe(student.spans(len(prompts)), loss_of, step, cost)
        sums = processes.sums({"loss": totals["loss"], "tokens": float(num_tokens)})
        record = {"loss": sums["loss"] / max(sums["tokens"], 1.0), "reference_tokens": int(sums["tokens"]),
                  "generated_tokens": 0}
        return StepResult({**record, **updated}, {"prompts": prompts})

    # ------------------------------------------------------------------ what every method's step shares

    def update_and_probe(self, spans: list[slice], loss_of: Callable[[slice], torch.Tensor], step: int,
                         cost: StepCost) -> dict[str, Any]:
        """The optimizer update from the micro-batches' losses, the teacher's follow-up (EMA), and the probe NLL
        after the update (every `train.probe_every` steps; the last value in between)."""
        update = self.updater.step(spans, loss_of, step)
        if update.applied:
            self.teacher.weights.after_optimizer_step()
        probe_before = self.last_probe_nll
        measured = (step + 1) % self.config.train.probe_every == 0
        if measured:
            self.last_probe_nll = self.probe_nll(cost)
        return {"probe_nll": self.last_probe_nll, "probe_nll_before": probe_before,
                **self.signals.after_update(measured, cost), **update.record(self.updater.skipped_steps)}

    def measures_teacher_ref_logp(self, step: int) -> bool:
        """g_t costs a teacher pass over the references: taken when the exposure policy's reward uses it, else
        every `train.teacher_ref_logp_every` steps for the log (0: never)."""
        every = self.config.train.teacher_ref_logp_every
        return self.exposure.uses_teacher_ref_logp or (every > 0 and (step + 1) % every == 0)

    def probe_nll(self, cost: StepCost | None = None) -> float:
        """The student's mean per-token NLL of the probe set's reference solutions (docs/method.md#statistics)."""
        return self.student.probe_nll(self.probe_problems, cost)

    def rollout_generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(step_seed(self.config.run.seed, step, self.processes.index, 1))

    # ------------------------------------------------------------------ save and resume

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters being trained (all of them, or only the adapter's with LoRA); sharded, every process
        must ask for them (they are gathered)."""
        if self.sharding is not None:
            return self.sharding.trainable_state(self.unwrapped)
        return {name: p.detach().cpu().clone() for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        self.processes.wait_for_everyone()
        is_main = self.processes.is_main
        tensors = self.sharding.checkpoint_tensors(self.unwrapped, self.optimizer, self.teacher.weights, is_main) \
            if self.sharding is not None else None  # sharded, every process joins the gathers
        if not is_main:
            return
        weights, optimizer, teacher = tensors or (self.trainable_state(), self.optimizer.state_dict(),
                                                  self.teacher.weights.state_dict())
        state = TrainingState(
            weights=weights, optimizer=optimizer, exposure=self.exposure.state_dict(), teacher=teacher,
            trainer={"step": self.step, "data_position": self.step * self.config.train.batch_size,
                     **self.updater.state_dict(), "last_probe_nll": self.last_probe_nll,
                     "signals": self.signals.state_dict()})
        save_checkpoint(self.run_dir, self.step, lambda directory: write_training_state(directory, state),
                        keep=self.config.train.keep_checkpoints)

    def load_checkpoint(self, directory: Path) -> None:
        expected = {name: p.shape for name, p in self.unwrapped.named_parameters() if p.requires_grad}
        state = read_training_state(directory, expected)
        if self.sharding is not None:
            self.sharding.load_checkpoint_tensors(self.unwrapped, self.optimizer, self.teacher.weights, state)
        else:
            self.unwrapped.load_state_dict(state.weights, strict=False)
            self.optimizer.load_state_dict(state.optimizer)
            self.teacher.weights.load_state_dict(state.teacher)
        self.exposure.load_state_dict(state.exposure)
        self.updater.load_state_dict(state.trainer)
        self.step = state.trainer["step"]
        self.last_probe_nll = state.trainer["last_probe_nll"]
        self.signals.load_state_dict(state.trainer.get("signals"))

    def save(self) -> None:
        """The trained model (the adapter, for LoRA) and tokenizer in ``<run>/final_model`` (see models.export)."""
        self.processes.wait_for_everyone()
        lora = self.config.model.lora
        save_merged = bool(lora and lora.save_merged)
        if self.sharding is not None:  # every process joins the gathers; the main one writes
            self.sharding.save_final_model(self.unwrapped, self.tokenizer, self.run_dir, save_merged,
                                           self.processes.is_main)
        elif self.processes.is_main:
            save_final_model(self.unwrapped, self.tokenizer, self.run_dir, save_merged=save_merged)


# ---------------------------------------------------------------------------------------------- a step's record


@dataclass
class StepResult:
    """A step's record (over all processes, what ``metrics.jsonl`` gets) and what this process alone measured
    before it was combined (for `Trainer`'s ``on_local_step`` hook: prompts, grades, per-token KL)."""

    record: dict[str, Any]
    local: dict[str, Any] = field(default_factory=dict)


def mean_alpha(alphas: Sequence[float]) -> float:
    """The step's ``alpha`` column: the batch's α, or under a policy per problem the mean of the problems' α (each
    problem's α is in decisions.jsonl)."""
    return alphas[0] if all(alpha == alphas[0] for alpha in alphas) else fmean(alphas)


def per_token(outputs: Sequence[DivergenceOutput], name: str) -> torch.Tensor:
    """One per-token column of the step's micro-batch `outputs` (``per_token_kl``, ``per_token_loss``), joined."""
    return torch.cat([getattr(o, name) for o in outputs])


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.float(), q)) if values.numel() else float("nan")


def distillation_statistics(outputs: Sequence[DivergenceOutput], processes: Processes) -> dict[str, float]:
    """The mismatch statistics of a distillation step over all processes (docs/method.md#statistics): loss,
    kl_mean, top1_disagree and confidence are sums over every completion token of the step divided by their number;
    the tail quantiles kl_p90 and kl_p99 are over every token of every process together (each process's per-token
    KL is gathered)."""
    kl = per_token(outputs, "per_token_kl")
    sums = processes.sums({
        "kl": float(kl.sum()), "disagree": float(torch.cat([o.top1_disagree for o in outputs]).float().sum()),
        "confidence": float(torch.cat([o.student_token_prob for o in outputs]).sum()), "tokens": float(kl.numel()),
        "loss": sum(float(o.loss_sum.detach()) for o in outputs)})
    tokens = max(sums["tokens"], 1.0)
    every_kl = processes.gathered(kl)
    return {
        "loss": sums["loss"] / tokens,
        "kl_mean": sums["kl"] / tokens,
        "kl_p90": quantile(every_kl, 0.9),
        "kl_p99": quantile(every_kl, 0.99),
        "top1_disagree": sums["disagree"] / tokens,
        "confidence": sums["confidence"] / tokens,
    }
