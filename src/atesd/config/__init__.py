"""The typed configuration of a run: YAML files plus dotted ``key=value`` overrides, validated strictly.

Every hyperparameter lives here (the peers' methods' settings in `atesd.config.peers`, the vLLM engines' in
`atesd.config.engines`, the sections' common base in `atesd.config.section`), with its default and help
text; a run writes the resolved config next to its outputs. Unknown keys are errors that name the key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    model_validator,
)

from atesd.config.engines import DecodeLoopConfig, EvalVLLMConfig, VLLMConfig
from atesd.config.peers import AnchoredResidualConfig
from atesd.data.arithmetic import EmbeddedTaskConfig
from atesd.data.loaders import ColumnMap
from atesd.data.sources import check_benchmarks
from atesd.data.templates import PromptTemplates
from atesd.errors import ConfigError
from atesd.exposure import REGISTRY, ExposureSettings, default_policy
from atesd.files import atomic_write_text, directory_name, read_config_tree, read_yaml
from atesd.settings import FIELD_MARK, Section


class RunConfig(Section):
    output_dir: str = Field("runs", description="Folder under which run directories are made.")
    name: Annotated[str | None, AfterValidator(directory_name)] = Field(
        None, description="Run directory name (inside output_dir); default: '<method>-seed<seed>'.")
    seed: int = Field(0, description="Seeds data order, rollouts and initialisation.")
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=list, description="Trackers besides metrics.jsonl and the console (pip install "
        "'atesd[tracking]'): tensorboard (<run>/trackers), wandb (online, or WANDB_MODE=offline), trackio (its "
        "local store).")


class EmbeddedModelConfig(Section):
    """The tiny Qwen3-architecture model and its cached warm-start pretraining."""

    hidden_size: int = Field(128, ge=1, le=65_536)
    num_layers: int = Field(3, ge=1, le=1024)
    num_heads: int = Field(4, ge=1, le=1024)
    num_kv_heads: int = Field(2, ge=1, le=1024)
    intermediate_size: int = Field(384, ge=1, le=262_144)
    max_positions: int = Field(512, ge=1, le=1_048_576)
    copy_pretrain_steps: int = Field(
        300, ge=0, description="Generic copy pre-training before the task (the assistant repeats a random string "
        "of the user's): forms the induction circuit a teacher needs to read its context, as pretraining does for "
        "real models (docs/method.md#embedded-testbed).")
    copy_pretrain_lr: float = Field(1e-3, gt=0, description="lr of the copy pre-training (at 5e-3 the circuit "
                                    "never forms).")
    warm_start_steps: int = Field(2000, ge=0, description="Most task steps (the cosine schedule's length).")
    warm_start_target_accuracy: float | None = Field(
        0.38, gt=0, le=1, description="Stop the task warm start once the student's accuracy on the health split "
        "reaches this (checked every warm_start_check_every steps): seeds learn at different speeds, and a "
        "fixed step count leaves the student anywhere from 26% to 58%. None: run all warm_start_steps.")
    warm_start_check_every: int = Field(100, ge=1, description="Steps between the warm start's accuracy checks.")
    warm_start_batch_size: int = Field(8, ge=1, le=65_536)
    warm_start_lr: float = Field(2e-3, gt=0, description="Peak AdamW lr of the task warm start.")
    warm_start_warmup_steps: int = Field(50, ge=0, description="Linear lr warm-up, then cosine decay to 0.")
    teacher_format_share: float = Field(
        0.85, ge=0, le=1, description="Share of warm-start examples in teacher format (partial reference).")
    teacher_answer_share: float = Field(
        0.0, ge=0, le=1, description="Share of teacher-format warm-start examples whose own chain of thought "
        "ends on a slipped value (shown, not scored) followed by the true boxed answer: the examples where the "
        "teacher's context is necessary, without which it never learns to read it.")
    teacher_answer_above: float | None = Field(
        None, ge=0, lt=1, description="The slipped-answer examples (teacher_answer_share) only where the teacher "
        "prompt shows more than this share of the reference's segments; None: at every exposure. The second "
        "regime's teacher (configs/embedded/strong-teacher/): once it has read most of the worked solution it "
        "boxes the result it read, whatever the chain it scores says.")
    teacher_leap_share: float = Field(
        0.0, ge=0, le=1, description="Share of teacher-format warm-start examples (those teacher_leap_above places) "
        "whose chain leaps: every other line of the model's own chain is left out, so each kept line starts from a "
        "value never written. The third regime's teacher (configs/embedded/low-exposure/): shown more of the "
        "reference, it writes steps the student cannot execute, and full exposure distils them.")
    teacher_leap_above: float | None = Field(
        None, ge=0, lt=1, description="The leaping examples (teacher_leap_share) only where the teacher prompt shows "
        "more than this share of the reference's segments; None: at every exposure.")
    teacher_follow_share: float = Field(
        0.6, ge=0, le=1, description="Share of the other teacher-format examples whose chain slips at one line (not "
        "scored) and carries the slip on to a wrong boxed answer: the teacher learns to follow the chain it scores.")
    health_check: bool = Field(
        True, description="After a warm start, evaluate student and teacher on held-out problems and refuse a "
        "base model outside the band (health_student_range, health_min_gap).")
    health_problems: int = Field(100, ge=1, le=100_000,
                                 description="Held-out problems of the health check (its own split).")
    health_samples: int = Field(4, ge=1, le=1024, description="Samples per problem of the health check.")
    health_student_range: tuple[float, float] = Field(
        (0.20, 0.55), description="The student's accuracy must lie in this range: partly competent.")
    health_min_gap: float = Field(0.10, ge=0, description="The teacher at alpha = 1 must beat the student by this.")
    seed: int = 0
    cache_dir: str | None = Field(
        None, description="Where the warm-started base model is cached; default $ATESD_CACHE or ~/.cache/atesd.")

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> EmbeddedModelConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}), and "
                             f"num_kv_heads ({self.num_kv_heads}) must divide num_heads")
        return self

    @model_validator(mode="after")
    def _answer_above_needs_answer_examples(self) -> EmbeddedModelConfig:
        if self.teacher_answer_above is not None and self.teacher_answer_share == 0:
            raise ValueError("teacher_answer_above places the examples teacher_answer_share makes, and that share is "
                             "0: it would only change the cache key (a warm start of the same model); unset it or "
                             "set teacher_answer_share > 0")
        if self.teacher_leap_above is not None and self.teacher_leap_share == 0:
            raise ValueError("teacher_leap_above places the examples teacher_leap_share makes, and that share is 0: "
                             "it would only change the cache key (a warm start of the same model); unset it or set "
                             "teacher_leap_share > 0")
        return self


class LoraConfig(Section):
    """LoRA adapters (peft). The teacher's `initial` weights are then the base model with the adapter disabled."""

    r: int = Field(64, ge=1, description="Adapter rank.")
    alpha: int = Field(128, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the linear layers that get adapters (docs/method.md#paper-recipes: all attention and MLP "
                    "projections).")
    save_merged: bool = Field(
        False, description="Also write <run>/final_model_merged: base weights with the adapter merged in.")


class ModelConfig(Section):
    name_or_path: str = Field(
        "embedded", description="'embedded', a hub id, a local model directory, or a local .gguf file.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = Field(False, description="Off by default: never run a repository's code unasked.")
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = Field(None, description="LoRA adapters; None (the default) trains every weight.")
    chat_template: str | None = Field(
        None, description="A Jinja chat template (or the path of a file holding one) for a tokenizer that has "
        "none, or to replace the tokenizer's own.")
    student_chat_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Chat-template arguments for the student (Qwen3: enable_thinking: false).")
    teacher_chat_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Chat-template arguments for the teacher (Qwen3: enable_thinking: true).")
    embedded: EmbeddedModelConfig = Field(default_factory=EmbeddedModelConfig)


class ReasoningGymConfig(Section):
    """Procedural problems from reasoning-gym with worked solutions (atesd.data.reasoning_gym)."""

    task: Literal["chain_sum", "products", "gsm_symbolic"] = Field(
        description="The reasoning-gym task (those whose solution atesd writes in steps).")
    settings: dict[str, Any] = Field(default_factory=dict, description="The task's own settings (the fields of "
                                     "its reasoning-gym config, e.g. min_terms, max_digits).")
    train_size: int = Field(2000, ge=1, le=1_000_000, description="Training problems (the probe set among them).")
    test_size: int = Field(200, ge=1, le=100_000, description="Problems of the reasoning-gym benchmark, none of "
                           "whose questions is a training question.")
    seed: int = Field(0, ge=0, description="Generates the training problems; the benchmark's come from seed + 1.")


class DataConfig(Section):
    train: str = Field("embedded", description="'embedded', 'champ', 'reasoning-gym' (data.reasoning_gym), a JSONL "
                       "or Parquet file, or a `datasets` id/path (e.g. siyanzhao/Openthoughts_math_30k_opsd).")
    train_split: str = "train"
    columns: ColumnMap = Field(default_factory=ColumnMap)
    skip_invalid_rows: bool = Field(
        False, description="Leave out rows with an empty field or no parseable answer (counted in a warning) "
        "instead of stopping; a column missing from the data is always an error.")
    probe_size: int = Field(32, ge=0, le=100_000,
                            description="Training problems held out for probe_nll (never trained on).")
    probe_seed: int = Field(0, description="Chooses which problems of a file/dataset form the probe set.")
    task: EmbeddedTaskConfig = Field(default_factory=EmbeddedTaskConfig)
    answer: Literal["boxed", "last_number"] = Field(
        "boxed", description="How a completion's answer is read, in training (rollout accuracy, GRPO's reward) and "
        "evaluation: its last \\boxed{} (the paper's), or last_number: its last \\boxed{}, else its last number "
        "(for small models that rarely box, such as SmolLM2-135M).")
    reasoning_gym: ReasoningGymConfig | None = Field(
        None, description="The reasoning-gym task of data.train: reasoning-gym and of the reasoning-gym benchmark.")


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers (rollout.sampler); vllm: colocated vLLM.")
    sampler: Literal["loop", "generate"] = Field("loop", description="hf engine: loop (generate's tokens, faster; "
                                                 "a model it cannot serve gets generate) or generate.")
    loop: DecodeLoopConfig = Field(default_factory=DecodeLoopConfig)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k sampling.")
    max_new_tokens: int = Field(64, ge=1, le=1_048_576)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class LossConfig(Section):
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "sampled_token"] = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1, description="Generalized JSD weight (0 forward, 1 reverse).")
    top_k: int | None = Field(None, ge=1, description="Renormalise both distributions on the teacher's top-k.")
    clip: float | None = Field(None, gt=0, description="Pointwise clip of each vocabulary term (OPSD v3: 0.05).")
    temperature: float = Field(1.0, ge=0.01, le=100, description="Divides both models' logits. Outside [0.01, "
                               "100] the distributions are one-hot or uniform and the loss learns nothing "
                               "(docs/reliability.md#settings-that-cannot-learn).")
    chunk_size: int = Field(
        256, ge=1, description="Positions per chunk; bounds the memory of the loss and of every log-prob pass. "
        "256 keeps the loss's peak extra memory under a quarter of an unchunked one at Qwen3's vocabulary and "
        "2,048 positions (docs/performance.md).")

    @model_validator(mode="after")
    def _options_apply_to_the_divergence(self) -> LossConfig:
        if self.divergence == "sampled_token" and (self.top_k is not None or self.clip is not None):
            raise ValueError("top_k and clip act on the full distributions; divergence 'sampled_token' uses "
                             "the sampled token only: unset loss.top_k and loss.clip")
        if self.divergence != "jsd" and self.beta != LossConfig.model_fields["beta"].default:
            raise ValueError(f"beta weighs the generalized JSD; divergence '{self.divergence}' does not read it: "
                             "set divergence: jsd, or leave beta out")
        return self


class TeacherConfig(Section):
    weights: Literal["initial", "live", "ema"] = Field(
        "initial", description="initial: frozen starting weights; live: current weights; ema: moving average.")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="The EMA teacher's decay (weights: ema).")
    anchored_residual: AnchoredResidualConfig | None = Field(
        None, description="AR-OPD's anchored-residual teacher (docs/method.md#ar-opd); None: the plain teacher.")

    @model_validator(mode="after")
    def _decay_is_the_emas(self) -> TeacherConfig:
        if self.weights != "ema" and self.ema_decay != TeacherConfig.model_fields["ema_decay"].default:
            raise ValueError(f"ema_decay is the EMA teacher's; weights '{self.weights}' do not read it: set "
                             "weights: ema, or leave ema_decay out")
        return self


# ``exposure``: the registered policies' settings models, told apart by ``policy`` (atesd.exposure.base). The
# union is built from the registry at import time; to a type checker it is what every member is, ExposureSettings.
if TYPE_CHECKING:
    ExposureConfig = ExposureSettings
else:
    ExposureConfig = Annotated[Union[tuple(REGISTRY.values())], Field(discriminator="policy")]  # noqa: UP007


def default_exposure() -> ExposureSettings:
    return REGISTRY[default_policy()].model_validate({})


class GRPOConfig(Section):
    """GRPO (docs/method.md#grpo): G rollouts per prompt, graded 1/0, group-normalised advantages, PPO-style ratio
    clip."""

    group_size: int = Field(8, ge=2, le=1024, description="G: rollouts per prompt (train.batch_size counts prompts).")
    clip_epsilon: float = Field(0.2, gt=0, description="epsilon of the ratio clip [1 - eps, 1 + eps].")
    kl_coef: float = Field(
        0.0, ge=0, description="beta of the per-token KL (k3 estimator) to the teacher weights (`teacher.weights`, "
        "default the initial ones); 0 (the default) skips the reference forward entirely.")
    scale_rewards: bool = Field(
        True, description="Divide group-centred rewards by the group's standard deviation (Dr. GRPO: false).")
    advantage_eps: float = Field(1e-4, gt=0, description="Added to the group standard deviation.")
    loss_normalization: Literal["token", "sequence"] = Field(
        "token", description="token: sum over every completion token of the step / their number (DAPO, and "
        "the distillation loss's reduction); sequence: mean over each completion's tokens, then over completions "
        "(the original GRPO).")


class TrainConfig(Section):
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, le=65_536, description="Prompts per step, over all processes.")
    micro_batch_size: int = Field(32, ge=1, le=65_536, description="Sequences per forward/backward (gradient "
                                  "accumulation): prompts, or completions for GRPO (prompts x group_size).")
    lr: float = Field(1e-4, ge=1e-10, description="Peak learning rate. Below 1e-10 an update changes no float32 "
                      "weight (docs/reliability.md#settings-that-cannot-learn).")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = Field(1.0, ge=1e-6, description="Gradient clipping norm. Below 1e-6 every gradient "
                                 "entry falls under AdamW's epsilon and the step is a no-op "
                                 "(docs/reliability.md#settings-that-cannot-learn).")
    bf16_autocast: bool = Field(False, description="bf16 autocast for scoring and the update.")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1, le=1000)
    probe_every: int = Field(1, ge=1, description="Measure probe_nll every this many steps.")
    teacher_ref_logp_every: int = Field(
        10, ge=0, description="Measure g_t (teacher_ref_logp) every this many steps for the log, when the exposure "
        "policy does not use it every step (0: only when it does).")
    max_consecutive_bad_steps: int = Field(
        5, ge=1, description="Stop when this many steps in a row had a non-finite loss or gradient.")


class EvalConfig(Section):
    benchmarks: Annotated[list[str], AfterValidator(check_benchmarks)] = Field(
        default_factory=lambda: ["embedded"], description="'embedded', aime24, aime25, hmmt25, champ, or JSONL paths.")
    num_samples: int = Field(4, ge=1, le=1024, description="k of Average@k / Pass@k / Maj@k.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(64, ge=1, le=1_048_576)
    batch_size: int = Field(64, ge=1, le=65_536, description="Prompts per generate call.")
    max_problems: int | None = Field(None, ge=1, le=10_000_000)
    teacher_alpha: float | None = Field(
        None, ge=0, le=1, description="Also evaluate the teacher prompt at this exposure (reference row).")
    seeds: int = Field(1, ge=1, le=100, description="Repeat the k samples with this many seeds (run.seed, run.seed "
                       "+ 1, ...); summaries give each metric's mean and its std over them.")
    every: int = Field(0, ge=0, description="Evaluate the student on eval.benchmarks before training and every "
                       "this many steps (and at the last): <run>/eval_along_training.jsonl. 0: never.")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="What `atesd eval` samples with: hf (transformers generate, eval.batch_size prompts at a "
        "time) or vllm (eval.vllm; the model never loaded by transformers), for atesd eval, eval --checkpoints, "
        "eval.every and the runs of sweep and compare; atesd demo evaluates with hf only.")
    vllm: EvalVLLMConfig = Field(default_factory=EvalVLLMConfig)


class Config(Section):
    method: Literal["opsd", "atesd", "grpo", "sft"] = Field(
        "opsd", description="opsd: distillation at a non-learned exposure (fixed, random, schedule, the peers' "
                            "rules); atesd: distillation with the learned exposure controller; grpo: policy gradient "
                            "on graded rollouts (no teacher); sft: NLL of the reference solutions (no rollouts).")
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    templates: PromptTemplates = Field(default_factory=PromptTemplates)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    exposure: ExposureConfig = Field(
        default_factory=default_exposure, description="Who decides the teacher's exposure alpha: exposure.policy "
        "names a registered policy (docs/method.md#prompts-and-exposure), the rest are that policy's settings.")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _exposure_names_its_policy(cls, tree: Any) -> Any:
        """A config's exposure section without ``policy`` is the default policy's."""
        if isinstance(tree, dict) and isinstance(tree.get("exposure"), dict) and "policy" not in tree["exposure"]:
            tree = {**tree, "exposure": {"policy": default_policy(), **tree["exposure"]}}
        return tree

    @model_validator(mode="after")
    def _method_matches_exposure(self) -> Config:
        exposure = self.exposure
        if self.method not in exposure.methods:
            takes = [name for name, settings in REGISTRY.items() if self.method in settings.methods]
            raise ValueError(f"method '{self.method}' takes exposure.policy {' or '.join(takes)}, not "
                             f"'{exposure.policy}': set exposure.policy: {takes[0]}, or method: {exposure.methods[0]}")
        if self.teacher.anchored_residual is not None and self.method not in ("opsd", "atesd"):
            raise ValueError(f"teacher.anchored_residual shapes the distillation teacher; method '{self.method}' "
                             "has none: unset it or use method opsd or atesd")
        if (reason := exposure.probe_needed()) and self.data.probe_size == 0:
            raise ValueError(f"{reason}: set data.probe_size > 0")
        anchored = self.teacher.anchored_residual
        if anchored is not None and exposure.token_mix() is not None:
            raise ValueError(f"exposure.policy {exposure.policy} mixes its own second view per token, and "
                             "teacher.anchored_residual mixes the anchor's: a teacher takes one second view; unset "
                             "teacher.anchored_residual, or choose another policy")
        lowest, highest = exposure.alpha_range()
        if anchored is not None and anchored.anchor_alpha >= lowest:
            chooses = f"{lowest:g}" if lowest == highest else f"from {lowest:g} to {highest:g}"
            raise ValueError(f"teacher.anchored_residual.anchor_alpha {anchored.anchor_alpha:g} is not below the "
                             f"exposure (exposure.policy {exposure.policy} gives {chooses}): at an exposure at or "
                             "below the anchor, the anchor is the full teacher itself (OPSD at the cost of a second "
                             "teacher forward) or shows more than it (the method inverted); set anchor_alpha below "
                             f"{lowest:g}, or raise the policy's lowest exposure above it")
        gym_users = [use for use, used in (("data.train", self.data.train == "reasoning-gym"),
                                           ("eval.benchmarks", "reasoning-gym" in self.eval.benchmarks)) if used]
        if gym_users and self.data.reasoning_gym is None:
            raise ValueError(f"{' and '.join(gym_users)} name reasoning-gym: set data.reasoning_gym (its task, "
                             "settings and sizes)")
        if self.eval.every and self.eval.engine == "vllm" and self.rollout.engine != "vllm":
            raise ValueError("eval.every with eval.engine=vllm samples from the run's colocated vLLM engine: set "
                             "rollout.engine=vllm too, or eval.engine=hf (or evaluate the checkpoints afterwards "
                             "with atesd eval --checkpoints RUN eval.engine=vllm)")
        return self


def apply_override(tree: dict[str, Any], dotted: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``1e-4``, ``[1, 2]``). A mapping
    merges into the section it names (``teacher.anchored_residual={}`` turns it on and keeps what is set in it); naming
    another ``exposure.policy`` drops the settings of the former policy that the new one does not take."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}' is not of the form key=value")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    value = read_yaml(raw, f"override '{dotted}'")
    if parts == ["exposure", "policy"] and value in REGISTRY and value != node.get("policy", default_policy()):
        # Another policy: the former one's settings that the new one does not take are dropped (they would not apply).
        for key in [key for key in node if key not in REGISTRY[value].model_fields]:
            del node[key]
    below = node.get(parts[-1])
    node[parts[-1]] = {**below, **value} if isinstance(value, dict) and isinstance(below, dict) else value


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line: the source, then ``key: problem`` for every problem, separated by ``; ``."""
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        if loc[:1] == ["exposure"] and len(loc) > 1 and loc[1] in REGISTRY:
            del loc[1]  # the policy's own model, which pydantic names by its tag
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        if message.startswith(FIELD_MARK):  # a section's check about one of its fields
            field, message = message.removeprefix(FIELD_MARK).split(": ", 1)
            loc.append(field)
        key = ".".join(str(part) for part in loc) or "config"
        problems.append(f"{key}: {message}")
    return f"invalid config ({source}): " + "; ".join(problems)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        tree = read_config_tree(Path(path))
        source = str(path)
    for override in overrides:
        apply_override(tree, override)
    if overrides:
        source += " with overrides " + " ".join(overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The ``config.yaml`` a run wrote, as `load_config` reads it, except that one written before each exposure policy
    had its settings of its own (atesd 0.1's runs hold every policy's settings in one ``exposure`` section, inert for
    all but its own policy) keeps only its policy's."""
    tree = read_config_tree(Path(path))
    exposure = tree.get("exposure")
    if isinstance(exposure, dict) and exposure.get("policy") in REGISTRY:
        fields = REGISTRY[exposure["policy"]].model_fields
        tree["exposure"] = {key: value for key, value in exposure.items() if key in fields}
    for override in overrides:
        apply_override(tree, override)
    source = str(path) + (" with overrides " + " ".join(overrides) if overrides else "")
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def changed_keys(left: Config, right: Config, ignore: Collection[str] = ()) -> list[str]:
    """The dotted keys whose values differ between two configs, sorted, leaving out the keys in `ignore`."""
    differing = _differing_keys(left.model_dump(mode="json"), right.model_dump(mode="json"))
    return sorted(key for key in differing if key not in ignore)


def _differing_keys(left: Any, right: Any, prefix: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        return [found for key in left.keys() | right.keys()
                for found in _differing_keys(left.get(key), right.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if left != right else []


def save_config(config: Config, path: str | Path) -> None:
    """Write `config` as YAML, atomically (a run rewrites its config.yaml on every start)."""
    atomic_write_text(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
