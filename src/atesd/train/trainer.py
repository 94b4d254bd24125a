"""The training loop: on-policy self-distillation with teacher exposure, and its baselines, on `accelerate`.

One distillation step (OPSD, ATESD), top to bottom (`Trainer.train_step`, `_distillation_step`):

1. the exposure policy gives α (decided on the main process and broadcast, so every process uses the same);
2. this process's share of the step's prompts is sampled by a seeded, resumable order;
3. the student samples one completion per prompt from the student prompt;
4. the teacher (same model, teacher weights) scores each completion after the teacher prompt at α, and the
   student scores it after the student prompt; the divergence between their per-token distributions is the
   loss (SPEC §2), normalised by the completion tokens of the whole step over all processes;
5. one optimizer step, unless the loss or the gradient is not finite: then the step is skipped and counted;
6. the statistics of SPEC §3 are measured, averaged over processes, logged and handed to the policy, which
   may finish decisions (logged to ``decisions.jsonl``) and learn from them (the ATESD controller).

The baselines run in the same loop, with the same data order, rollout engine, update (accumulation, clipping,
skipping), probe NLL, logging and checkpoints (SPEC §5): GRPO (`_grpo_step`) samples G completions per prompt,
grades them and takes the ratio-clipped policy gradient with group-normalised advantages (no teacher prompt,
no exposure); SFT (`_sft_step`) trains on the NLL of the reference solutions, without rollouts.

Every step's record also says what it cost: generated tokens, tokens through scoring forwards
(``forward_tokens``), and seconds per part (rollout with grading, teacher forwards, student update, probe).

Checkpoints are atomic and hold everything needed to continue the run exactly (`--resume`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from atesd.config import Config, ConfigError, changed_keys, load_config, save_config
from atesd.data.problem import Problem
from atesd.data.sources import hold_out_probe, load_problems
from atesd.eval.grading import grade
from atesd.exposure import build_exposure_policy
from atesd.losses import DivergenceSpec, divergence_from_hidden
from atesd.losses.policy import clipped_policy_loss, group_advantages, k3_kl, sft_loss, token_weights
from atesd.models.export import save_final_model
from atesd.models.loading import load_training_model, resolve_model_path
from atesd.models.sequences import (
    PackedSequences,
    completion_hidden_states,
    completion_token_logprobs,
    output_head,
    pack_sequences,
    shared_prompt_hidden_states,
    token_logprobs_from_hidden,
)
from atesd.models.teacher import Teacher
from atesd.rollout import Completions, SamplingParams, build_rollout_engine
from atesd.train.checkpoint import latest_checkpoint, save_checkpoint
from atesd.train.metrics import MetricsLogger
from atesd.train.prompts import PromptBuilder
from atesd.train.state_io import load_state, save_state


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row produced a non-finite loss or gradient."""


def training_problems(config: Config) -> tuple[list[Problem], list[Problem]]:
    """(train, probe): the probe problems are held out of training (SPEC §3)."""
    if config.data.train == "embedded":
        from atesd.models.embedded import embedded_splits

        splits = embedded_splits(config)
        return splits["train"], splits["probe"]
    problems = load_problems(config.data.train, config.data.train_split, config.data.columns,
                             skip_invalid=config.data.skip_invalid_rows)
    return hold_out_probe(problems, config.data.probe_size, seed=config.data.probe_seed)


def run_directory(config: Config) -> Path:
    name = config.run.name or f"{config.method}-seed{config.run.seed}"
    return Path(config.run.output_dir) / name


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from (run seed, step, process), independent of anything sampled before."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class EpochOrder:
    """Problem indices in a fresh seeded permutation per epoch; the order is a function of the step alone,
    so resuming at step s continues exactly where an uninterrupted run would be."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._epoch, self._permutation = -1, np.arange(0)

    def batch(self, step: int) -> list[int]:
        indices = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.size)
            if epoch != self._epoch:
                self._epoch = epoch
                self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            indices.append(int(self._permutation[offset]))
        return indices


@dataclass
class StepScores:
    """What scoring the step's rollouts produced on this process."""

    loss_sum: float
    per_token_kl: torch.Tensor
    top1_disagree: torch.Tensor
    student_token_prob: torch.Tensor


class Trainer:
    """Sets up a run from its config, trains it and saves it. `train()` is the whole job."""

    def __init__(self, config: Config, *, resume: bool = False, accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.accelerator = accelerator or Accelerator(log_with=config.run.report_to or None)
        set_seed(config.run.seed)
        self.run_dir = run_directory(config)
        world = self.accelerator.num_processes
        if config.train.batch_size % world:
            raise ConfigError(f"train.batch_size ({config.train.batch_size}) must be divisible by the number "
                              f"of processes ({world})")

        self.train_problems, self.probe_problems = training_problems(config)
        refuse_unsupported_distribution(self.accelerator)
        model, self.tokenizer = load_training_model(config)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
        # The scheduler stays outside accelerate.prepare: our batch size is already global, and a prepared
        # scheduler would step once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Made after prepare, so that a teacher copy (full fine-tuning) sits on the training device too.
        self.teacher = Teacher(self.unwrapped, config.teacher.weights, config.teacher.ema_decay)
        self.engine = build_rollout_engine(config, self.unwrapped, self.tokenizer, resolve_model_path(config),
                                           batch_size=config.train.micro_batch_size,
                                           seed=step_seed(config.run.seed, self.accelerator.process_index))
        self.prompts = PromptBuilder(self.tokenizer, config.templates, config.model.student_chat_kwargs,
                                     config.model.teacher_chat_kwargs)
        self.policy = build_exposure_policy(config.exposure, config.train.steps, config.run.seed)
        self.order = EpochOrder(len(self.train_problems), config.train.batch_size, config.run.seed)
        self.sampling = SamplingParams(config.rollout.temperature, config.rollout.top_p, config.rollout.top_k,
                                       config.rollout.max_new_tokens)
        self.divergence = DivergenceSpec(kind=config.loss.divergence, beta=config.loss.beta, top_k=config.loss.top_k,
                                         clip=config.loss.clip, temperature=config.loss.temperature,
                                         chunk_size=config.loss.chunk_size)
        self.step = 0  # optimizer steps completed (including skipped ones)
        self.skipped_steps = 0
        self.consecutive_bad_steps = 0
        self.last_probe_nll: float | None = None
        self._last_grad_norm = float("nan")
        self._last_step_skipped = False
        self._seconds = {"rollout": 0.0, "teacher": 0.0}  # of the current step, per part (see train_step)
        self._forward_tokens = 0  # tokens through the current step's scoring forwards on this process

        if self.accelerator.is_main_process:
            self._prepare_run_dir(resume)
        self.accelerator.wait_for_everyone()
        if resume:
            checkpoint = latest_checkpoint(self.run_dir)
            if checkpoint is None:
                raise FileNotFoundError(f"--resume: {self.run_dir} has no checkpoint to resume from")
            self.load_checkpoint(checkpoint)
        kept = self.step if resume else 0
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", self.accelerator, keep_before_step=kept)
        self.decisions = MetricsLogger(self.run_dir / "decisions.jsonl", self.accelerator, keep_before_step=kept,
                                       step_key="logged_at", trackers=False)

    # ------------------------------------------------------------------ the loop

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def train(self) -> Path:
        """Train to `train.steps`, checkpointing on the way; returns the run directory."""
        total = self.config.train.steps
        if self.last_probe_nll is None:
            self.last_probe_nll = self.probe_nll()
        progress = tqdm(total=total, initial=self.step, desc=f"train {self.run_dir.name}", unit="step",
                        disable=not self.accelerator.is_main_process)
        try:
            while self.step < total:
                record = self.train_step()
                self.metrics.log(record)
                for row in self.policy.drain_decisions():
                    self.decisions.log(row)
                progress.update(1)
                progress.set_postfix({key: f"{record[key]:.{digits}f}" for key, digits in
                                      (("loss", 4), ("rollout_accuracy", 2), ("alpha", 2)) if key in record})
                if self.step % self.config.train.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            progress.close()
            self.accelerator.print(f"\ninterrupted at step {self.step}; the last checkpoint is intact: resume "
                                   "with --resume")
            raise
        progress.close()
        # Decisions still waiting for their reward are written once, at the end (a resume drops them again).
        for row in self.policy.open_decisions():
            self.decisions.log(row)
        self.save_final_model()
        self.metrics.close()
        self.decisions.close()
        return self.run_dir

    def train_step(self) -> dict[str, Any]:
        """One student update of the configured method; returns the step's record (SPEC §3 statistics and more)."""
        step, config = self.step, self.config
        started = time.perf_counter()
        torch.manual_seed(step_seed(config.run.seed, step, self.accelerator.process_index))
        self._seconds = {"rollout": 0.0, "teacher": 0.0}
        self._forward_tokens = 0
        problems = self._local_problems(step)
        if config.method == "sft":
            record = self._sft_step(problems)
        elif config.method == "grpo":
            record = self._grpo_step(problems, step)
        else:
            record = self._distillation_step(problems, step)
        update_done = time.perf_counter()
        self.step += 1
        probe = self.probe_nll() if self.step % config.train.probe_every == 0 else self.last_probe_nll
        probe_before, self.last_probe_nll = self.last_probe_nll, probe
        finished = time.perf_counter()

        forward_tokens = self._global_sums({"forward_tokens": float(self._forward_tokens)})["forward_tokens"]
        record = {"step": self.step, **record, "probe_nll": probe, "probe_nll_before": probe_before,
                  "grad_norm": self._last_grad_norm, "lr": self.scheduler.get_last_lr()[0],
                  "skipped": self._last_step_skipped, "skipped_steps": self.skipped_steps,
                  "forward_tokens": int(forward_tokens)}
        rollout_time, teacher_time = self._seconds["rollout"], self._seconds["teacher"]
        record.update(rollout_time=rollout_time, teacher_time=teacher_time,
                      update_time=update_done - started - rollout_time - teacher_time,
                      probe_time=finished - update_done, step_time=finished - started)
        if config.method in ("opsd", "atesd"):
            record.update(self.policy.observe(step, record))
        return record

    # ------------------------------------------------------------------ the methods

    def _distillation_step(self, problems: list[Problem], step: int) -> dict[str, Any]:
        """OPSD / ATESD: the teacher at α scores the student's rollouts; the student learns its distributions."""
        alpha = self._shared_alpha(step)
        student_prompts = [self.prompts.student(p) for p in problems]
        teacher_prompts = [self.prompts.teacher(p, alpha) for p in problems]
        rollouts, correct = self._rollouts(student_prompts, problems, step)
        teacher_hidden, teacher_ref_logp = self._teacher_scoring(teacher_prompts, rollouts, problems)
        scores = self._distill_and_update(student_prompts, teacher_hidden, rollouts)
        return {"alpha": alpha, **self._distillation_record(scores), "teacher_ref_logp": teacher_ref_logp,
                **self._rollout_record(rollouts, correct)}

    def _grpo_step(self, problems: list[Problem], step: int) -> dict[str, Any]:
        """GRPO (SPEC §5): G graded rollouts per prompt, group-normalised advantages, the ratio-clipped policy
        gradient (losses.policy), optionally a KL to the teacher weights; no teacher prompt, no exposure."""
        grpo = self.config.grpo
        group_problems = [p for p in problems for _ in range(grpo.group_size)]
        prompts = [self.prompts.student(p) for p in group_problems]
        rollouts, correct = self._rollouts(prompts, group_problems, step)
        rewards = torch.tensor(correct, dtype=torch.float32)
        advantages = group_advantages(rewards, grpo.group_size, grpo.scale_rewards, grpo.advantage_eps)
        lengths = [len(ids) for ids in rollouts.completion_ids]
        token_advantages = advantages.repeat_interleave(torch.tensor(lengths)).to(self.accelerator.device)
        weights = token_weights(lengths, grpo.loss_normalization, self.accelerator.device)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        units = sum(lengths) if grpo.loss_normalization == "token" else len(lengths)
        scale = self._loss_scale(units)
        totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0}

        def micro_loss(span: slice) -> torch.Tensor:
            batch = self._packed(prompts[span], rollouts.completion_ids[span])
            tokens = slice(offsets[span.start], offsets[min(span.stop, len(lengths))])
            logprobs = self._student_token_logprobs(batch)
            per_token, clipped = clipped_policy_loss(logprobs, logprobs.detach(), token_advantages[tokens],
                                                     grpo.clip_epsilon)
            if grpo.kl_coef > 0:
                kl = k3_kl(logprobs, self._teacher_token_logprobs(batch))
                per_token = per_token + grpo.kl_coef * kl
                totals["kl"] += float(kl.detach().sum())
            loss = (per_token * weights[tokens]).sum()
            totals["loss"] += float(loss.detach())
            totals["clipped"] += float(clipped.sum())
            return loss * scale

        self._update(self._micro_batches(len(prompts)), micro_loss)
        groups = rewards.view(-1, grpo.group_size)
        sums = self._global_sums({
            "loss": totals["loss"], "units": float(units), "clipped": totals["clipped"], "kl": totals["kl"],
            "tokens": float(sum(lengths)), "group_std": float(groups.std(dim=1).sum()),
            "groups": float(groups.shape[0]), "flat_groups": float((groups.std(dim=1) == 0).sum())})
        tokens = max(sums["tokens"], 1.0)
        record = {"loss": sums["loss"] / max(sums["units"], 1.0), "reward_std": sums["group_std"] / sums["groups"],
                  "groups_without_signal": sums["flat_groups"] / sums["groups"], "clip_fraction": sums["clipped"] / tokens}
        if grpo.kl_coef > 0:
            record["kl_ref"] = sums["kl"] / tokens
        return {**record, **self._rollout_record(rollouts, correct)}

    def _sft_step(self, problems: list[Problem]) -> dict[str, Any]:
        """SFT (SPEC §5): the NLL of the reference solutions after the student prompt; no rollouts."""
        prompts = [self.prompts.student(p) for p in problems]
        solutions = [self.prompts.solution(p) for p in problems]
        num_tokens = sum(len(ids) for ids in solutions)
        scale = self._loss_scale(num_tokens)
        totals = {"loss": 0.0}

        def micro_loss(span: slice) -> torch.Tensor:
            loss = sft_loss(self._student_token_logprobs(self._packed(prompts[span], solutions[span]))).sum()
            totals["loss"] += float(loss.detach())
            return loss * scale

        self._update(self._micro_batches(len(prompts)), micro_loss)
        sums = self._global_sums({"loss": totals["loss"], "tokens": float(num_tokens)})
        return {"loss": sums["loss"] / max(sums["tokens"], 1.0), "reference_tokens": int(sums["tokens"]),
                "generated_tokens": 0}

    # ------------------------------------------------------------------ the parts the methods share

    def _shared_alpha(self, step: int) -> float:
        """The policy decides on the main process; every process uses that decision."""
        decision = [self.policy.alpha(step) if self.accelerator.is_main_process else None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(decision, from_process=0)
        return float(decision[0])

    def _local_problems(self, step: int) -> list[Problem]:
        indices = self.order.batch(step)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return [self.train_problems[i] for i in indices[rank::world]]

    def _rollouts(self, prompts: list[list[int]], problems: list[Problem], step: int) -> tuple[Completions, list[bool]]:
        """One sampled completion per prompt from the current weights, and whether each one's answer is right."""
        started = time.perf_counter()
        config = self.config
        generator = torch.Generator().manual_seed(step_seed(config.run.seed, step, self.accelerator.process_index, 1))
        self.engine.update_weights()  # a separate engine (vLLM) samples with the weights of the last update
        rollouts = self.engine.generate(prompts, self.sampling, generator)
        correct = [grade(self.tokenizer.decode(ids, skip_special_tokens=True), p.answer).correct
                   for ids, p in zip(rollouts.completion_ids, problems)]
        self._seconds["rollout"] += time.perf_counter() - started
        return rollouts, correct

    def _rollout_record(self, rollouts: Completions, correct: list[bool]) -> dict[str, Any]:
        sums = self._global_sums({
            "correct": float(sum(correct)), "count": float(len(correct)),
            "tokens": float(rollouts.num_tokens), "truncated": float(sum(not f for f in rollouts.finished))})
        count = max(sums["count"], 1.0)
        return {"rollout_accuracy": sums["correct"] / count, "completion_length": sums["tokens"] / count,
                "truncated_rate": sums["truncated"] / count, "generated_tokens": int(sums["tokens"])}

    def _micro_batches(self, size: int) -> list[slice]:
        micro = self.config.train.micro_batch_size
        return [slice(start, start + micro) for start in range(0, size, micro)]

    def _loss_scale(self, local_units: int) -> float:
        """DDP averages gradients over processes; scaling each process's loss sum by world / (units of the whole
        step) turns that average into "sum over the step / number of units" (SPEC §2), whatever the split."""
        global_units = self._global_sums({"units": float(local_units)})["units"]
        return self.accelerator.num_processes / max(global_units, 1.0)

    def _packed(self, prompts: list[list[int]], completions: list[list[int]]) -> PackedSequences:
        batch = pack_sequences(prompts, completions, self.tokenizer.pad_token_id).to(self.accelerator.device)
        self._forward_tokens += int(batch.attention_mask.sum())
        return batch

    def _student_token_logprobs(self, batch: PackedSequences) -> torch.Tensor:
        weight, bias = output_head(self.unwrapped)
        return token_logprobs_from_hidden(completion_hidden_states(self.model, batch), weight, bias, batch.targets,
                                          self.config.loss.chunk_size)

    def _teacher_token_logprobs(self, batch: PackedSequences) -> torch.Tensor:
        with self._timed("teacher"), self.teacher.scoring() as teacher_model, self._autocast():
            return completion_token_logprobs(teacher_model, batch, self.config.loss.chunk_size)

    @torch.no_grad()
    def _teacher_scoring(self, teacher_prompts: list[list[int]], rollouts: Completions,
                         problems: list[Problem]) -> tuple[list[torch.Tensor], float]:
        """The teacher at α, per micro-batch: its final hidden states at the rollouts' positions (the distillation
        targets) and g_t, the mean log-prob it gives the reference solutions (SPEC §3). Both continue the same
        teacher prompts, which run once for the two (`shared_prompt_hidden_states`)."""
        hidden, total, count = [], 0.0, 0
        with self._timed("teacher"), self.teacher.scoring() as teacher_model, self._autocast():
            head, bias = output_head(teacher_model)
            for span in self._micro_batches(len(teacher_prompts)):
                prompts, completions = teacher_prompts[span], rollouts.completion_ids[span]
                solutions = [self.prompts.solution(p) for p in problems[span]]
                rollout_hidden, reference_hidden = shared_prompt_hidden_states(
                    teacher_model, prompts, [completions, solutions], self.tokenizer.pad_token_id)
                hidden.append(rollout_hidden)
                targets = torch.tensor([token for ids in solutions for token in ids], device=self.accelerator.device)
                total += float(token_logprobs_from_hidden(reference_hidden, head, bias, targets,
                                                          self.config.loss.chunk_size).sum())
                count += targets.numel()
                self._forward_tokens += sum(len(ids) for part in (prompts, completions, solutions) for ids in part)
        sums = self._global_sums({"total": total, "count": float(count)})
        return hidden, sums["total"] / max(sums["count"], 1.0)

    def _distill_and_update(self, student_prompts: list[list[int]], teacher_hidden: list[torch.Tensor],
                            rollouts: Completions) -> StepScores:
        """The student's scoring, the distillation loss against the teacher's hidden states (one tensor per
        micro-batch), and the optimizer step (or a counted skip)."""
        scale = self._loss_scale(rollouts.num_tokens)
        loss_sum, parts = 0.0, []
        with self.teacher.scoring() as teacher_model:
            teacher_head, teacher_bias = output_head(teacher_model)
        micro_batches = self._micro_batches(len(student_prompts))
        targets_of = {span.start: hidden for span, hidden in zip(micro_batches, teacher_hidden)}

        def micro_loss(span: slice) -> torch.Tensor:
            nonlocal loss_sum
            student_batch = self._packed(student_prompts[span], rollouts.completion_ids[span])
            student_hidden = completion_hidden_states(self.model, student_batch)
            head, bias = output_head(self.unwrapped)
            out = divergence_from_hidden(student_hidden, targets_of[span.start], head, teacher_head,
                                         student_batch.targets, self.divergence, bias, teacher_bias)
            loss_sum += float(out.loss_sum.detach())
            parts.append(out)
            return out.loss_sum * scale

        self._update(micro_batches, micro_loss)
        return StepScores(
            loss_sum=loss_sum,
            per_token_kl=torch.cat([p.per_token_kl for p in parts]),
            top1_disagree=torch.cat([p.top1_disagree for p in parts]),
            student_token_prob=torch.cat([p.student_token_prob for p in parts]),
        )

    def _update(self, micro_batches: list[slice], micro_loss: Callable[[slice], torch.Tensor]) -> bool:
        """Backward of each micro-batch's (already scaled) loss, then one clipped optimizer step. A step whose loss
        or gradient is not finite on any process is skipped and counted; too many in a row stop the run."""
        config, accelerator = self.config, self.accelerator
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        for index, span in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            sync = accelerator.no_sync(self.model) if not last else contextlib.nullcontext()
            with sync, self._autocast():
                loss = micro_loss(span)
                finite = finite and bool(torch.isfinite(loss))
                # Backward even for a non-finite loss: every process must join the gradient all-reduce; the
                # step is then skipped below.
                accelerator.backward(loss)

        finite = self._all_processes_agree(finite)
        grad_norm = float("nan")
        if finite:
            grad_norm = float(accelerator.clip_grad_norm_(self.model.parameters(), config.train.max_grad_norm))
            finite = self._all_processes_agree(math.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.teacher.after_optimizer_step()
            self.consecutive_bad_steps = 0
        else:
            self.skipped_steps += 1
            self.consecutive_bad_steps += 1
            if self.consecutive_bad_steps >= config.train.max_consecutive_bad_steps:
                raise NonFiniteLossError(
                    f"{self.consecutive_bad_steps} steps in a row had a non-finite loss or gradient (last at step "
                    f"{self.step}); no update reached the weights. Lower train.lr, set loss.clip, or check the "
                    "data; the last checkpoint is intact.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._last_grad_norm = grad_norm
        self._last_step_skipped = not finite
        return finite

    # ------------------------------------------------------------------ statistics (SPEC §3)

    @torch.no_grad()
    def probe_nll(self) -> float:
        """Mean per-token NLL of the probe set's reference solutions under the student prompt."""
        if not self.probe_problems:
            return float("nan")
        model = self.unwrapped
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for span in self._micro_batches(len(self.probe_problems)):
            chunk = self.probe_problems[span]
            batch = self._packed([self.prompts.student(p) for p in chunk], [self.prompts.solution(p) for p in chunk])
            with self._autocast():
                logprobs = completion_token_logprobs(model, batch, self.config.loss.chunk_size)
            total -= float(logprobs.sum())
            count += batch.num_tokens
        model.train(was_training)
        return total / count

    def _distillation_record(self, scores: StepScores) -> dict[str, float]:
        kl = scores.per_token_kl
        sums = self._global_sums({
            "kl": float(kl.sum()), "disagree": float(scores.top1_disagree.float().sum()),
            "confidence": float(scores.student_token_prob.sum()), "tokens": float(kl.numel()),
            "loss": scores.loss_sum})
        tokens = max(sums["tokens"], 1.0)
        # The tail quantiles are over every completion token of the step, all processes together: each
        # process's per-token KL is padded to the longest (NaN) and gathered, the padding dropped.
        all_kl = self.accelerator.gather(self.accelerator.pad_across_processes(
            kl.float().to(self.accelerator.device), pad_index=float("nan")))
        all_kl = all_kl[~torch.isnan(all_kl)]
        return {
            "loss": sums["loss"] / tokens,
            "kl_mean": sums["kl"] / tokens,
            "kl_p90": _quantile(all_kl, 0.9),
            "kl_p99": _quantile(all_kl, 0.99),
            "top1_disagree": sums["disagree"] / tokens,
            "confidence": sums["confidence"] / tokens,
        }

    # ------------------------------------------------------------------ helpers

    def _lr_factor(self, step: int) -> float:
        train = self.config.train
        warmup = min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else 1.0
        progress = min(step / max(train.steps, 1), 1.0)
        if train.lr_scheduler == "linear":
            return warmup * (1.0 - progress)
        if train.lr_scheduler == "cosine":
            return warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warmup

    def _global_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over processes (one reduce for all of them)."""
        if self.accelerator.num_processes == 1:
            return values
        summed = self.accelerator.reduce(torch.tensor(list(values.values()), dtype=torch.float64,
                                                      device=self.accelerator.device), "sum")
        return dict(zip(values, summed.tolist()))

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[part] += time.perf_counter() - started

    def _autocast(self):
        enabled = self.config.train.bf16_autocast
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _all_processes_agree(self, flag: bool) -> bool:
        value = torch.tensor(1.0 if flag else 0.0, device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, "min").item() > 0.5) if self.accelerator.num_processes > 1 \
            else flag

    # ------------------------------------------------------------------ run directory and checkpoints

    def _prepare_run_dir(self, resume: bool) -> None:
        config_path = self.run_dir / "config.yaml"
        if resume:
            if not config_path.is_file():
                raise FileNotFoundError(f"--resume: {config_path} does not exist; nothing to resume")
            # extending a run (more train.steps) is allowed
            changed = changed_keys(load_config(config_path), self.config, ignore=("train.steps",))
            if changed:
                raise ConfigError(f"--resume: the config differs from the run's {config_path} in: "
                                  f"{', '.join(changed)}; resume with the same settings or start a new run")
        elif latest_checkpoint(self.run_dir) is not None:
            raise ConfigError(f"{self.run_dir} already holds a run with checkpoints: pass --resume to continue it, "
                              "or set run.name / run.output_dir for a new one")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, config_path)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters being trained (all of them, or only the adapter's with LoRA)."""
        return {name: p.detach().cpu().clone() for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return

        def write(directory: Path) -> None:
            save_file(self.trainable_state(), str(directory / "model.safetensors"))
            save_state(self.optimizer.state_dict(), directory, "optimizer")
            save_state(self.policy.state_dict(), directory, "exposure")
            save_state(self.teacher.state_dict(), directory, "teacher")
            save_state({"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.random.get_rng_state()}, directory, "rng")
            trainer_state = {
                "step": self.step,
                "data_position": self.step * self.config.train.batch_size,
                "skipped_steps": self.skipped_steps,
                "consecutive_bad_steps": self.consecutive_bad_steps,
                "last_probe_nll": self.last_probe_nll,
                "scheduler": self.scheduler.state_dict(),
            }
            (directory / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))

        save_checkpoint(self.run_dir, self.step, write, keep=self.config.train.keep_checkpoints)

    def load_checkpoint(self, directory: Path) -> None:
        weights = load_file(str(directory / "model.safetensors"))
        expected = {name for name, p in self.unwrapped.named_parameters() if p.requires_grad}
        if set(weights) != expected:
            raise ValueError(f"{directory}/model.safetensors does not match the model: missing "
                             f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]}")
        self.unwrapped.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(load_state(directory, "optimizer"))
        self.policy.load_state_dict(load_state(directory, "exposure"))
        self.teacher.load_state_dict(load_state(directory, "teacher"))
        rng = load_state(directory, "rng")
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.random.set_rng_state(rng["torch"])
        state = json.loads((directory / "trainer_state.json").read_text())
        self.step = state["step"]
        self.skipped_steps = state["skipped_steps"]
        self.consecutive_bad_steps = state["consecutive_bad_steps"]
        self.last_probe_nll = state["last_probe_nll"]
        self.scheduler.load_state_dict(state["scheduler"])

    def save_final_model(self) -> None:
        """The trained model (the adapter, for LoRA) and tokenizer in ``<run>/final_model`` (see models.export)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            lora = self.config.model.lora
            save_final_model(self.unwrapped, self.tokenizer, self.run_dir, save_merged=bool(lora and lora.save_merged))


def refuse_unsupported_distribution(accelerator: Accelerator) -> None:
    """DDP (or one process) only, for now. Under DeepSpeed, `accelerator.backward` runs DeepSpeed's own optimizer
    step after every backward, which would bypass this loop's micro-batch accumulation, non-finite-step skipping
    and clipping; FSDP (and ZeRO-3) shard the parameters that rollouts (HF generate, the vLLM weight sync) read
    in full on every process."""
    kind = accelerator.state.distributed_type.name
    if kind in ("DEEPSPEED", "FSDP"):
        raise ConfigError(f"the accelerate config uses {kind}, which atesd's training loop does not support yet: "
                          "use configs/accelerate/ddp.yaml (see docs/scaling.md)")


def _quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.float(), q)) if values.numel() else float("nan")
