"""Distillation divergences between the student's and the teacher's next-token distributions, in chunks.

Every completion token n has a student distribution p_S and a teacher distribution p_T over the whole
vocabulary. This file computes the per-token distillation loss (forward KL, reverse KL, generalized JSD or the
sampled-token policy gradient, with the optional top-k, pointwise clip and temperature of
docs/method.md#distillation-loss) and the per-token mismatch statistics of docs/method.md#statistics (forward
KL, top-1 disagreement, student probability of the sampled token).

Why chunks. Done in one piece, the loss over N positions makes several float32 [N, V] tensors per side
(upcast logits, log-softmaxes, probabilities, the per-entry terms) and autograd keeps most of them for the
backward pass. With a batch of 32 completions of 1,024 tokens and Qwen3's V = 151,936, one such tensor is
already 20 GB. So positions are taken `chunk_size` at a time, and each chunk's loss runs inside
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`: the forward pass keeps only the chunk's
inputs (views of the caller's tensors) and its [chunk] loss, frees the float32 [chunk, V] intermediates as
soon as the chunk is done, and recomputes them chunk by chunk during backward. Peak extra memory is then a
few [chunk_size, V] float32 tensors whatever N is; the price is one more forward pass of the loss in
backward. The statistics are computed in the same chunk, from the same logits, under `torch.no_grad` and
after the loss, so the recomputation in backward stops before reaching them.

Two entry points. `divergence_from_logits` takes [N, V] logits the caller already has. Their memory is
the caller's, and so is the student logits' gradient: an [N, V] tensor in the logits' dtype, which the
backward of the chunk split assembles from the chunks' gradients (both exist for a moment, so 2 x [N, V]
in that dtype at the peak). `divergence_from_hidden` takes the final hidden states [N, D] and the LM heads
[V, D] and makes each chunk's logits itself, so that no [N, V] tensor ever exists, not even in backward:
the student's gradient goes to the hidden states [N, D] and the head [V, D].

Numerics: inside a chunk everything is computed in float32 (float64 inputs stay float64), whatever the
input dtype, so bf16 logits are upcast one chunk at a time. In the hidden path the chunk's logits come from
the matmul in the inputs' own dtype, as the model's lm_head would compute them, and are then upcast.
Logits must be finite (a -inf logit gives NaN terms, as in `torch.nn.functional.kl_div`).

Gradients reach the student side only; the teacher side is detached.

A teacher may be the combination of two teacher passes at the same positions (`TeacherMix`: AR-OPD's anchored
residual, `atesd.train.forwards`): the second pass's hidden states are split into the same chunks, and each
chunk's teacher logits are combined from both passes' logits, so the combination never needs [N, V] either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "sampled_token"]


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence to take between student and teacher, and how.

    - `kind`: ``forward_kl`` KL(p_T || p_S) (the OPSD default); ``reverse_kl`` KL(p_S || p_T); ``jsd`` the
      generalized Jensen-Shannon divergence of GKD / TRL with mixing weight `beta`; ``sampled_token`` the
      reverse-KL policy gradient on the sampled token only, -sg(log p_T(y) - log p_S(y)) * log p_S(y).
    - `beta`: used by ``jsd`` only. With M = beta * p_T + (1 - beta) * p_S the loss is
      beta * KL(p_T || M) + (1 - beta) * KL(p_S || M); beta = 0 is defined as forward KL and beta = 1 as
      reverse KL (the GKD convention; note that the mixture formula itself goes to 0 at both ends, so the
      end points are a convention, not a limit).
    - `top_k`: keep the teacher's k most likely tokens at each position and renormalise both sides over
      them; the divergence is over those k entries.
    - `clip`: pointwise clip, each vocabulary entry's contribution l_{n,v} becomes min(l_{n,v}, clip)
      before the sum over the vocabulary (OPSD v3 uses 0.05). A clipped entry passes no gradient.
    - `temperature`: both sides' logits are divided by it before everything else.
    - `chunk_size`: positions per chunk; peak extra memory is a few float32 [chunk_size, V] tensors.

    ``sampled_token`` looks at one vocabulary entry per position, so `top_k` and `clip`, which act on the
    vocabulary sum, have no meaning for it; setting them together is an error rather than silently ignored.
    """

    kind: Divergence = "forward_kl"
    beta: float = 0.5
    top_k: int | None = None
    clip: float | None = None
    temperature: float = 1.0
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.kind not in get_args(Divergence):
            raise ValueError(f"DivergenceSpec.kind: unknown divergence {self.kind!r}, "
                             f"expected one of {get_args(Divergence)}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"DivergenceSpec.beta must be in [0, 1], got {self.beta}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"DivergenceSpec.temperature must be a finite number > 0, "
                             f"got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"DivergenceSpec.top_k must be None or an integer >= 1, got {self.top_k!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"DivergenceSpec.clip must be None or > 0, got {self.clip}")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"DivergenceSpec.chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        if self.kind == "sampled_token" and (self.top_k is not None or self.clip is not None):
            raise ValueError("DivergenceSpec: top_k and clip act on the vocabulary sum and do not apply to "
                             "kind='sampled_token'; leave them None")


class TeacherMix(Protocol):
    """A second teacher pass whose logits combine with the teacher's into the distilled teacher, chunk by chunk."""

    hidden: torch.Tensor  # [N, D]: its final hidden states at the same positions, read with the teacher's head

    def combine(self, teacher_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
        """The distilled teacher's logits (or log-probs) of a chunk from both passes' logits [chunk, V]."""
        ...


@dataclass
class DivergenceOutput:
    """The loss and the per-token statistics of one call, for N positions.

    `loss_sum` is the sum over positions of the per-token loss and carries the gradient to the student
    (divide by the token count for the mean). The [N] tensors are detached: `per_token_loss` (float32),
    `per_token_kl` (float32, forward KL(p_T || p_S) over the full vocabulary at temperature 1 with no clip
    and no top-k, whatever the loss uses: the mismatch statistic), `top1_disagree` (bool, teacher argmax !=
    student argmax) and `student_token_prob` (float32, p_S(target) at temperature 1).
    """

    loss_sum: torch.Tensor
    per_token_loss: torch.Tensor
    per_token_kl: torch.Tensor
    top1_disagree: torch.Tensor
    student_token_prob: torch.Tensor


def divergence_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                           spec: DivergenceSpec) -> DivergenceOutput:
    """Divergence and statistics from student and teacher logits [N, V] and the sampled tokens [N]."""
    n, vocab = _check_logits(student_logits, teacher_logits)
    _check_targets(targets, n, vocab)
    _check_top_k(spec, vocab)
    teacher_logits = teacher_logits.detach()
    if n == 0:
        return _empty_output(student_logits, [student_logits])
    use_checkpoint = torch.is_grad_enabled() and student_logits.requires_grad

    size = spec.chunk_size
    chunks = zip(student_logits.split(size), teacher_logits.split(size), targets.split(size))
    return _over_chunks(partial(_chunk_from_logits, spec=spec), chunks, use_checkpoint)


def divergence_from_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                           student_head: torch.Tensor, teacher_head: torch.Tensor, targets: torch.Tensor,
                           spec: DivergenceSpec, student_head_bias: torch.Tensor | None = None,
                           teacher_head_bias: torch.Tensor | None = None,
                           teacher_mix: TeacherMix | None = None) -> DivergenceOutput:
    """Divergence and statistics from final hidden states [N, D] and LM heads [V, D] (+ optional bias [V]).

    Each chunk's logits are ``hidden_chunk @ head.T (+ bias)``, so the [N, V] logits are never made.
    Student and teacher may have different hidden sizes; the vocabulary must be the same. The student's
    gradient goes to `student_hidden`, `student_head` and `student_head_bias` (those that require grad);
    the teacher's tensors get none, even when the teacher's head is the student's head tensor itself.
    With `teacher_mix`, each chunk's teacher logits are ``teacher_mix.combine(teacher's, second pass's)``.
    """
    n, vocab = _check_hidden(student_hidden, teacher_hidden, student_head, teacher_head,
                             student_head_bias, teacher_head_bias)
    if teacher_mix is not None and teacher_mix.hidden.shape != teacher_hidden.shape:
        raise ValueError(f"teacher_mix.hidden has shape {tuple(teacher_mix.hidden.shape)}, teacher_hidden "
                         f"{tuple(teacher_hidden.shape)}: the two passes must cover the same positions")
    _check_targets(targets, n, vocab)
    _check_top_k(spec, vocab)
    teacher_hidden, teacher_head = teacher_hidden.detach(), teacher_head.detach()
    teacher_head_bias = None if teacher_head_bias is None else teacher_head_bias.detach()
    student_side = [t for t in (student_hidden, student_head, student_head_bias) if t is not None]
    if n == 0:
        return _empty_output(student_hidden, student_side)
    use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in student_side)

    size = spec.chunk_size
    heads = (student_head, teacher_head, student_head_bias, teacher_head_bias)
    mixed = teacher_mix.hidden.detach().split(size) if teacher_mix is not None else repeat(None)
    chunks = ((hidden_s, hidden_t, hidden_m, *heads, chunk_targets) for hidden_s, hidden_t, hidden_m, chunk_targets
              in zip(student_hidden.split(size), teacher_hidden.split(size), mixed, targets.split(size)))
    combine = teacher_mix.combine if teacher_mix is not None else None
    return _over_chunks(partial(_chunk_from_hidden, spec=spec, combine=combine), chunks, use_checkpoint)


# --- one chunk -----------------------------------------------------------------------------------------

def _chunk_from_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mixed_hidden: torch.Tensor | None,
                       student_head: torch.Tensor, teacher_head: torch.Tensor, student_head_bias: torch.Tensor | None,
                       teacher_head_bias: torch.Tensor | None, targets: torch.Tensor, spec: DivergenceSpec,
                       combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
                       ) -> tuple[torch.Tensor, ...]:
    student_logits = F.linear(student_hidden, student_head, student_head_bias)
    with torch.no_grad():
        teacher_logits = F.linear(teacher_hidden, teacher_head, teacher_head_bias)
        if combine is not None:
            assert mixed_hidden is not None  # AR-OPD's mix comes with its hidden states
            teacher_logits = combine(teacher_logits, F.linear(mixed_hidden, teacher_head, teacher_head_bias))
    return _chunk_from_logits(student_logits, teacher_logits, targets, spec)


def _chunk_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                       spec: DivergenceSpec) -> tuple[torch.Tensor, ...]:
    """(per-token loss with grad, forward KL at temperature 1, top-1 disagreement, p_S(target))."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student = student_logits.to(dtype)
    teacher = teacher_logits.to(dtype)
    loss = _per_token_loss(student, teacher, targets, spec)
    # Last, and without grad: non-reentrant checkpoint stops recomputing once the tensors the backward
    # needs are back, so these statistics are not computed a second time in backward.
    with torch.no_grad():
        stats = _mismatch_stats(student, teacher, targets)
    return (loss, *stats)


def _per_token_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                    spec: DivergenceSpec) -> torch.Tensor:
    if spec.temperature != 1.0:
        student, teacher = student / spec.temperature, teacher / spec.temperature
    if spec.kind == "sampled_token":
        # log p(y) = logit(y) - logsumexp(logits): no [chunk, V] log-softmax needed.
        student_logp = _token_logit(student, targets) - student.logsumexp(-1)
        teacher_logp = _token_logit(teacher, targets) - teacher.logsumexp(-1)
        return -(teacher_logp - student_logp).detach() * student_logp
    if spec.top_k is not None:
        top_ids = teacher.topk(spec.top_k, dim=-1).indices
        student, teacher = student.gather(-1, top_ids), teacher.gather(-1, top_ids)
    terms = _vocab_terms(student.log_softmax(-1), teacher.log_softmax(-1), spec)
    if spec.clip is not None:
        terms = terms.clamp(max=spec.clip)
    return terms.sum(-1)


def _vocab_terms(student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                 spec: DivergenceSpec) -> torch.Tensor:
    """Each vocabulary entry's contribution l_{n,v} to the divergence, before the vocabulary sum."""
    kind, beta = spec.kind, spec.beta
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return teacher_logp.exp() * (teacher_logp - student_logp)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return student_logp.exp() * (student_logp - teacher_logp)
    mixture_logp = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
    return (beta * teacher_logp.exp() * (teacher_logp - mixture_logp)
            + (1.0 - beta) * student_logp.exp() * (student_logp - mixture_logp))


def _mismatch_stats(student: torch.Tensor, teacher: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-token statistics of docs/method.md#statistics, at temperature 1 over the full vocabulary."""
    student_logp = student.log_softmax(-1)
    teacher_logp = teacher.log_softmax(-1)
    forward_kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    top1_disagree = teacher.argmax(-1) != student.argmax(-1)
    student_token_prob = _token_logit(student_logp, targets).exp()
    return forward_kl, top1_disagree, student_token_prob


def _token_logit(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return values.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# --- the loop over chunks --------------------------------------------------------------------------------

def _over_chunks(fn: Callable[..., tuple[torch.Tensor, ...]], chunks: Iterable[tuple],
                 use_checkpoint: bool) -> DivergenceOutput:
    """Call `fn` on each chunk's arguments and join the per-token results.

    The callers make chunks with `Tensor.split`, not by slicing: the backward of a split is one
    concatenation of the chunks' gradients, while each slice's backward makes a zero-filled tensor of the
    whole input's size, which would cost O(N^2 V / chunk_size) time and a second [N, V] buffer.
    """
    losses, kls, disagree, probs = [], [], [], []
    for args in chunks:
        if use_checkpoint:
            # No random ops inside, so there is no RNG state to save and restore.
            loss, kl, dis, prob = checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
        else:  # nothing to differentiate: a plain call, without the recomputation machinery
            loss, kl, dis, prob = fn(*args)
        losses.append(loss)
        kls.append(kl)
        disagree.append(dis)
        probs.append(prob)
    per_token_loss = torch.cat(losses)
    return DivergenceOutput(
        loss_sum=per_token_loss.sum(),
        per_token_loss=per_token_loss.detach().float(),
        per_token_kl=torch.cat(kls).float(),
        top1_disagree=torch.cat(disagree),
        student_token_prob=torch.cat(probs).float(),
    )


def _empty_output(like: torch.Tensor, student_side: list[torch.Tensor]) -> DivergenceOutput:
    # A zero that is still connected to the student's tensors, so that `.backward()` works (and every
    # student parameter gets a gradient, as data-parallel training expects) when a batch has no tokens.
    dtype = torch.promote_types(like.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=like.device)
    loss_sum = sum((t.sum().to(dtype) * 0.0 for t in student_side), zero)
    empty = torch.zeros(0, dtype=torch.float32, device=like.device)
    return DivergenceOutput(loss_sum=loss_sum, per_token_loss=empty, per_token_kl=empty.clone(),
                            top1_disagree=torch.zeros(0, dtype=torch.bool, device=like.device),
                            student_token_prob=empty.clone())


# --- argument checks -------------------------------------------------------------------------------------

def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[int, int]:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [N, V], got shape {tuple(t.shape)}")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"student_logits and teacher_logits have different numbers of positions N: "
                         f"{student_logits.shape[0]} vs {teacher_logits.shape[0]}")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(f"student_logits and teacher_logits have different vocabulary sizes V: "
                         f"{student_logits.shape[1]} vs {teacher_logits.shape[1]}")
    n, vocab = student_logits.shape
    if vocab == 0:
        raise ValueError("logits have an empty vocabulary (V = 0)")
    return n, vocab


def _check_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_head: torch.Tensor,
                  teacher_head: torch.Tensor, student_head_bias: torch.Tensor | None,
                  teacher_head_bias: torch.Tensor | None) -> tuple[int, int]:
    for name, t in (("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden),
                    ("student_head", student_head), ("teacher_head", teacher_head)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(f"student_hidden and teacher_hidden have different numbers of positions N: "
                         f"{student_hidden.shape[0]} vs {teacher_hidden.shape[0]}")
    for side, hidden, head in (("student", student_hidden, student_head),
                               ("teacher", teacher_hidden, teacher_head)):
        if hidden.shape[1] != head.shape[1]:
            raise ValueError(f"{side}_hidden has hidden size D = {hidden.shape[1]} but {side}_head [V, D] "
                             f"has D = {head.shape[1]}")
    if student_head.shape[0] != teacher_head.shape[0]:
        raise ValueError(f"student_head and teacher_head have different vocabulary sizes V: "
                         f"{student_head.shape[0]} vs {teacher_head.shape[0]}")
    vocab = student_head.shape[0]
    if vocab == 0:
        raise ValueError("the LM heads have an empty vocabulary (V = 0)")
    for name, bias in (("student_head_bias", student_head_bias), ("teacher_head_bias", teacher_head_bias)):
        if bias is not None and tuple(bias.shape) != (vocab,):
            raise ValueError(f"{name} must have shape [V] = ({vocab},), got {tuple(bias.shape)}")
    return student_hidden.shape[0], vocab


def _check_targets(targets: torch.Tensor, n: int, vocab: int) -> None:
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"targets must have shape [N] = ({n},), got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer (token id) tensor, got dtype {targets.dtype}")
    if n > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"targets must be token ids in [0, V) = [0, {vocab}), "
                             f"got values in [{low}, {high}]")


def _check_top_k(spec: DivergenceSpec, vocab: int) -> None:
    if spec.top_k is not None and spec.top_k > vocab:
        raise ValueError(f"DivergenceSpec.top_k = {spec.top_k} exceeds the vocabulary size V = {vocab}")
