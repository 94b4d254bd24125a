"""The training loop: on-policy self-distillation with teacher exposure, on `accelerate`.

One step, top to bottom (`Trainer.train_step`):

1. the exposure policy gives α (decided on the main process and broadcast, so every process uses the same);
2. this process's share of the step's prompts is sampled by a seeded, resumable order;
3. the student samples one completion per prompt from the student prompt;
4. the teacher (same model, teacher weights) scores each completion after the teacher prompt at α, and the
   student scores it after the student prompt; the divergence between their per-token distributions is the
   loss (SPEC §2), normalised by the completion tokens of the whole step over all processes;
5. one optimizer step, unless the loss or the gradient is not finite: then the step is skipped and counted;
6. the statistics of SPEC §3 are measured, averaged over processes, logged and handed to the policy, which
   may finish decisions (logged to ``decisions.jsonl``) and learn from them (the ATESD controller).

Checkpoints are atomic and hold everything needed to continue the run exactly (`--resume`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from atesd.config import Config, ConfigError, load_config, save_config
from atesd.data.problem import Problem
from atesd.data.sources import hold_out_probe, load_problems
from atesd.eval.grading import grade
from atesd.exposure import build_exposure_policy
from atesd.losses import DivergenceSpec, divergence_from_hidden
from atesd.models.export import save_final_model
from atesd.models.loading import load_training_model, resolve_model_path
from atesd.models.sequences import (
    completion_hidden_states,
    completion_token_logprobs,
    output_head,
    pack_sequences,
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
    finite: bool


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
                progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rollout_accuracy']:.2f}",
                                     alpha=f"{record['alpha']:.2f}")
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
        step, config = self.step, self.config
        started = time.perf_counter()
        torch.manual_seed(step_seed(config.run.seed, step, self.accelerator.process_index))
        alpha = self._shared_alpha(step)
        problems = self._local_problems(step)
        student_prompts = [self.prompts.student(p) for p in problems]
        teacher_prompts = [self.prompts.teacher(p, alpha) for p in problems]

        generator = torch.Generator().manual_seed(step_seed(config.run.seed, step, self.accelerator.process_index, 1))
        self.engine.update_weights()  # a separate engine (vLLM) samples with the weights of the last update
        rollouts = self.engine.generate(student_prompts, self.sampling, generator)
        rollout_done = time.perf_counter()
        correct = [grade(self.tokenizer.decode(ids, skip_special_tokens=True), p.answer).correct
                   for ids, p in zip(rollouts.completion_ids, problems)]

        teacher_ref_logp = self.teacher_reference_logprob(problems, teacher_prompts)
        scores = self._distill_and_update(student_prompts, teacher_prompts, rollouts)
        update_done = time.perf_counter()
        self.step += 1
        probe = self.probe_nll() if self.step % config.train.probe_every == 0 else self.last_probe_nll
        probe_before, self.last_probe_nll = self.last_probe_nll, probe

        record = self._step_record(alpha, rollouts, correct, scores, teacher_ref_logp, probe, probe_before)
        record.update(rollout_time=rollout_done - started, update_time=update_done - rollout_done,
                      step_time=time.perf_counter() - started)
        record.update(self.policy.observe(step, record))
        return record

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

    def _distill_and_update(self, student_prompts: list[list[int]], teacher_prompts: list[list[int]],
                            rollouts: Completions) -> StepScores:
        """Teacher and student scoring, the distillation loss, and the optimizer step (or a counted skip)."""
        config, accelerator = self.config, self.accelerator
        pad = self.tokenizer.pad_token_id
        local_tokens = torch.tensor(float(rollouts.num_tokens), device=accelerator.device)
        global_tokens = accelerator.reduce(local_tokens, reduction="sum").item()
        # DDP averages gradients over processes; scaling by world / global tokens turns that average into
        # "sum over every completion token of the step / number of those tokens" (SPEC §2).
        scale = accelerator.num_processes / max(global_tokens, 1.0)
        micro = config.train.micro_batch_size
        starts = list(range(0, len(student_prompts), micro))
        loss_sum, finite, parts = 0.0, True, []
        self.optimizer.zero_grad(set_to_none=True)
        for index, start in enumerate(starts):
            span = slice(start, start + micro)
            completions = rollouts.completion_ids[span]
            student_batch = pack_sequences(student_prompts[span], completions, pad).to(accelerator.device)
            teacher_batch = pack_sequences(teacher_prompts[span], completions, pad).to(accelerator.device)
            with self.teacher.scoring() as teacher_model, self._autocast():
                teacher_hidden = completion_hidden_states(teacher_model, teacher_batch)
                teacher_head, teacher_bias = output_head(teacher_model)
            last = index == len(starts) - 1
            sync = accelerator.no_sync(self.model) if not last else contextlib.nullcontext()
            with sync, self._autocast():
                student_hidden = completion_hidden_states(self.model, student_batch)
                head, bias = output_head(self.unwrapped)
                out = divergence_from_hidden(student_hidden, teacher_hidden, head, teacher_head,
                                             student_batch.targets, self.divergence, bias, teacher_bias)
                loss = out.loss_sum * scale
                if torch.isfinite(loss):
                    accelerator.backward(loss)
                else:
                    finite = False
            loss_sum += float(out.loss_sum.detach())
            parts.append(out)

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
        return StepScores(
            loss_sum=loss_sum,
            per_token_kl=torch.cat([p.per_token_kl for p in parts]),
            top1_disagree=torch.cat([p.top1_disagree for p in parts]),
            student_token_prob=torch.cat([p.student_token_prob for p in parts]),
            finite=finite,
        )

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
        micro = self.config.train.micro_batch_size
        for start in range(0, len(self.probe_problems), micro):
            chunk = self.probe_problems[start : start + micro]
            batch = pack_sequences([self.prompts.student(p) for p in chunk],
                                   [self.prompts.solution(p) for p in chunk],
                                   self.tokenizer.pad_token_id).to(self.accelerator.device)
            with self._autocast():
                logprobs = completion_token_logprobs(model, batch, self.config.loss.chunk_size)
            total -= float(logprobs.sum())
            count += batch.num_tokens
        model.train(was_training)
        return total / count

    @torch.no_grad()
    def teacher_reference_logprob(self, problems: list[Problem], teacher_prompts: list[list[int]]) -> float:
        """g_t: mean per-token log-prob the teacher at the current α gives the full reference solutions."""
        total, count = 0.0, 0
        micro = self.config.train.micro_batch_size
        for start in range(0, len(problems), micro):
            batch = pack_sequences(teacher_prompts[start : start + micro],
                                   [self.prompts.solution(p) for p in problems[start : start + micro]],
                                   self.tokenizer.pad_token_id).to(self.accelerator.device)
            with self.teacher.scoring() as teacher_model, self._autocast():
                logprobs = completion_token_logprobs(teacher_model, batch, self.config.loss.chunk_size)
            total += float(logprobs.sum())
            count += batch.num_tokens
        totals = self.accelerator.reduce(torch.tensor([total, float(count)], device=self.accelerator.device), "sum")
        return float(totals[0] / totals[1].clamp(min=1))

    def _step_record(self, alpha: float, rollouts: Completions, correct: list[bool], scores: StepScores,
                     teacher_ref_logp: float, probe_nll: float, probe_nll_before: float) -> dict[str, Any]:
        kl = scores.per_token_kl
        sums = torch.tensor([
            float(kl.sum()), float(scores.top1_disagree.float().sum()), float(scores.student_token_prob.sum()),
            float(kl.numel()), float(sum(correct)), float(len(correct)),
            float(sum(len(c) for c in rollouts.completion_ids)), float(sum(not f for f in rollouts.finished)),
            scores.loss_sum,
        ], device=self.accelerator.device)
        sums = self.accelerator.reduce(sums, "sum").tolist()
        tokens = max(sums[3], 1.0)
        # The tail quantiles are over every completion token of the step, all processes together: each
        # process's per-token KL is padded to the longest (NaN) and gathered, the padding dropped.
        all_kl = self.accelerator.gather(self.accelerator.pad_across_processes(
            kl.float().to(self.accelerator.device), pad_index=float("nan")))
        all_kl = all_kl[~torch.isnan(all_kl)]
        quantiles = [_quantile(all_kl, 0.9), _quantile(all_kl, 0.99)]
        return {
            "step": self.step,
            "alpha": alpha,
            "loss": sums[8] / tokens,
            "kl_mean": sums[0] / tokens,
            "kl_p90": quantiles[0],
            "kl_p99": quantiles[1],
            "top1_disagree": sums[1] / tokens,
            "confidence": sums[2] / tokens,
            "probe_nll": probe_nll,
            "probe_nll_before": probe_nll_before,
            "teacher_ref_logp": teacher_ref_logp,
            "rollout_accuracy": sums[4] / max(sums[5], 1.0),
            "completion_length": sums[6] / max(sums[5], 1.0),
            "truncated_rate": sums[7] / max(sums[5], 1.0),
            "generated_tokens": int(sums[6]),
            "grad_norm": self._last_grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "skipped": not scores.finite,
            "skipped_steps": self.skipped_steps,
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
            saved = load_config(config_path).model_dump(mode="json")
            current = self.config.model_dump(mode="json")
            saved["train"]["steps"] = current["train"]["steps"]  # extending a run is allowed
            if saved != current:
                changed = sorted(_changed_keys(saved, current))
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


def _changed_keys(left: Any, right: Any, prefix: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        keys = set(left) | set(right)
        return [k for key in keys for k in _changed_keys(left.get(key), right.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if left != right else []
