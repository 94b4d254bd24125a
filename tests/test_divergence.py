"""Chunked distillation divergences against a direct full-vocabulary reference, hand-made cases and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from atesd.losses import DivergenceSpec, divergence_from_hidden, divergence_from_logits

N, V, CHUNK = 37, 101, 8  # 37 = 4 * 8 + 5: the last chunk is short


# --- a direct reference: whole [N, V] in one piece, textbook formulas, no chunks, no checkpoint --------

def reference_per_token(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, kind: str,
                        beta: float = 0.5, top_k: int | None = None, clip: float | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    s = student / temperature
    t = teacher.detach() / temperature
    if kind == "sampled_token":
        rows = torch.arange(s.shape[0])
        log_ps = torch.log_softmax(s, dim=-1)[rows, targets]
        log_pt = torch.log_softmax(t, dim=-1)[rows, targets]
        return -(log_pt - log_ps).detach() * log_ps
    if top_k is not None:
        ids = torch.topk(t, top_k, dim=-1).indices
        s, t = torch.gather(s, 1, ids), torch.gather(t, 1, ids)
    ps, pt = torch.softmax(s, dim=-1), torch.softmax(t, dim=-1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        terms = pt * (pt.log() - ps.log())
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        terms = ps * (ps.log() - pt.log())
    else:
        m = beta * pt + (1 - beta) * ps
        terms = beta * pt * (pt.log() - m.log()) + (1 - beta) * ps * (ps.log() - m.log())
    if clip is not None:
        terms = torch.minimum(terms, torch.full_like(terms, clip))
    return terms.sum(-1)


def random_case(dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = (2.0 * torch.randn(N, V, generator=g)).to(dtype)
    teacher = (2.0 * torch.randn(N, V, generator=g)).to(dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    return student, teacher, targets


SPECS = [
    {"kind": "forward_kl"},
    {"kind": "reverse_kl"},
    {"kind": "jsd", "beta": 0.0},
    {"kind": "jsd", "beta": 0.3},
    {"kind": "jsd", "beta": 1.0},
    {"kind": "sampled_token"},
]
OPTIONS = [
    {},
    {"temperature": 0.7},
    {"clip": 0.05},
    {"top_k": 5},
    {"top_k": 5, "clip": 0.05, "temperature": 1.5},
]
# top_k and clip do not apply to sampled_token (it is an error to set them, see test_bad_spec_raises).
CASES = [(s, o) for s in SPECS for o in OPTIONS
         if not (s["kind"] == "sampled_token" and ("clip" in o or "top_k" in o))]


def ids(case):
    return ",".join(f"{k}={v}" for k, v in {**case[0], **case[1]}.items())


@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_logits_path_matches_direct_reference(case):
    kind_args, options = case
    student, teacher, targets = random_case()
    spec = DivergenceSpec(**kind_args, **options, chunk_size=CHUNK)

    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_()  # the teacher side must stay constant even so
    out = divergence_from_logits(s, t, targets, spec)
    out.loss_sum.backward()
    assert t.grad is None

    s_ref = student.clone().requires_grad_()
    ref = reference_per_token(s_ref, teacher, targets, **kind_args, **options)
    ref.sum().backward()

    # float64 inputs are computed in float64, so the match is to rounding; 1e-5 is generous but the
    # values themselves are O(1) per token (checked below), so a wrong formula could not pass.
    assert ref.abs().mean() > 1e-2
    torch.testing.assert_close(out.per_token_loss, ref.detach().float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss_sum, ref.sum().detach(), atol=1e-5, rtol=0)
    assert s.grad.abs().max() > 1e-3
    torch.testing.assert_close(s.grad, s_ref.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [{"clip": 0.05}, {"top_k": 5}], ids=["clip", "top_k"])
def test_options_change_the_value(options):
    # Guards the tests above against being vacuous: clip and top-k really act on these random logits.
    student, teacher, targets = random_case()
    plain = divergence_from_logits(student, teacher, targets, DivergenceSpec(chunk_size=CHUNK))
    changed = divergence_from_logits(student, teacher, targets, DivergenceSpec(**options, chunk_size=CHUNK))
    assert abs(plain.loss_sum.item() - changed.loss_sum.item()) > 0.1


def test_float32_inputs_match_float64_reference():
    student, teacher, targets = random_case(torch.float32)
    spec = DivergenceSpec(kind="jsd", beta=0.3, clip=0.05, chunk_size=CHUNK)
    s = student.clone().requires_grad_()
    out = divergence_from_logits(s, teacher, targets, spec)
    out.loss_sum.backward()
    s_ref = student.double().requires_grad_()
    ref = reference_per_token(s_ref, teacher.double(), targets, "jsd", beta=0.3, clip=0.05)
    ref.sum().backward()
    assert out.loss_sum.dtype == torch.float32 and s.grad.dtype == torch.float32
    torch.testing.assert_close(out.per_token_loss, ref.detach().float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss_sum.double(), ref.sum().detach(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(s.grad.double(), s_ref.grad, atol=1e-5, rtol=0)


def test_bfloat16_inputs_are_computed_in_float32():
    student, teacher, targets = random_case(torch.bfloat16)
    out = divergence_from_logits(student, teacher, targets, DivergenceSpec(chunk_size=CHUNK))
    # Reference on the same bf16 values, upcast: agreement to float32 rounding, far tighter than bf16's.
    ref = reference_per_token(student.float(), teacher.float(), targets, "forward_kl")
    assert out.per_token_loss.dtype == torch.float32 and out.per_token_kl.dtype == torch.float32
    torch.testing.assert_close(out.per_token_loss, ref, atol=1e-5, rtol=0)
    s = student.clone().requires_grad_()
    divergence_from_logits(s, teacher, targets, DivergenceSpec(chunk_size=CHUNK)).loss_sum.backward()
    assert s.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk_size", [1, 5, 37, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    student, teacher, targets = random_case()
    spec = {"kind": "jsd", "beta": 0.3, "top_k": 5}
    base = divergence_from_logits(student, teacher, targets, DivergenceSpec(**spec, chunk_size=8))
    other = divergence_from_logits(student, teacher, targets, DivergenceSpec(**spec, chunk_size=chunk_size))
    torch.testing.assert_close(other.per_token_loss, base.per_token_loss, atol=1e-12, rtol=0)
    torch.testing.assert_close(other.per_token_kl, base.per_token_kl, atol=1e-12, rtol=0)


# --- hidden-state path ---------------------------------------------------------------------------------

HIDDEN_SPECS = [{"kind": "forward_kl", "clip": 0.05}, {"kind": "jsd", "beta": 0.3, "top_k": 5},
                {"kind": "sampled_token", "temperature": 0.7}]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("kind_args", HIDDEN_SPECS, ids=["fkl", "jsd", "sampled"])
def test_hidden_path_gradients_match_reference(kind_args, with_bias):
    g = torch.Generator().manual_seed(1)
    d_student, d_teacher = 16, 12  # the two sides may even have different hidden sizes
    h_s = torch.randn(N, d_student, generator=g, dtype=torch.float64, requires_grad=True)
    w_s = (0.5 * torch.randn(V, d_student, generator=g, dtype=torch.float64)).requires_grad_()
    b_s = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    h_t = torch.randn(N, d_teacher, generator=g, dtype=torch.float64, requires_grad=True)
    w_t = (0.5 * torch.randn(V, d_teacher, generator=g, dtype=torch.float64)).requires_grad_()
    b_t = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    spec = DivergenceSpec(**kind_args, chunk_size=CHUNK)

    out = divergence_from_hidden(h_s, h_t, w_s, w_t, targets, spec, student_head_bias=b_s,
                                 teacher_head_bias=b_t)
    out.loss_sum.backward()
    for teacher_tensor in (h_t, w_t, b_t):
        if teacher_tensor is not None:
            assert teacher_tensor.grad is None
    got = [h_s.grad, w_s.grad] + ([b_s.grad] if with_bias else [])

    leaves = [h_s.detach().clone().requires_grad_(), w_s.detach().clone().requires_grad_()]
    if with_bias:
        leaves.append(b_s.detach().clone().requires_grad_())
    student_logits = leaves[0] @ leaves[1].T + (leaves[2] if with_bias else 0)
    teacher_logits = h_t @ w_t.T + (b_t if with_bias else 0)
    ref = reference_per_token(student_logits, teacher_logits, targets, **kind_args)
    ref.sum().backward()

    torch.testing.assert_close(out.per_token_loss, ref.detach().float(), atol=1e-5, rtol=0)
    for mine, theirs in zip(got, [leaf.grad for leaf in leaves]):
        assert theirs.abs().max() > 1e-3
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_hidden_path_with_a_shared_head_sends_gradient_through_the_student_side_only():
    # Self-distillation with a frozen-teacher adapter: one lm_head tensor serves both sides.
    g = torch.Generator().manual_seed(2)
    head = torch.randn(V, 16, generator=g, dtype=torch.float64, requires_grad=True)
    h_s = torch.randn(N, 16, generator=g, dtype=torch.float64)
    h_t = torch.randn(N, 16, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=g)
    out = divergence_from_hidden(h_s, h_t, head, head, targets, DivergenceSpec(chunk_size=CHUNK))
    out.loss_sum.backward()
    ref_head = head.detach().clone().requires_grad_()
    reference_per_token(h_s @ ref_head.T, h_t @ head.detach().T, targets, "forward_kl").sum().backward()
    torch.testing.assert_close(head.grad, ref_head.grad, atol=1e-5, rtol=0)


# --- memory: what the autograd graph keeps for backward -----------------------------------------------

def saved_for_backward(fn):
    """Run fn under a saved-tensors hook and return every tensor autograd packed for backward."""
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return packed


def test_logits_path_keeps_only_views_of_its_inputs_for_backward():
    student, teacher, targets = random_case(torch.float32)
    student.requires_grad_()
    packed = saved_for_backward(
        lambda: divergence_from_logits(student, teacher, targets,
                                       DivergenceSpec(clip=0.05, chunk_size=CHUNK)))
    inputs = {x.untyped_storage().data_ptr() for x in (student, teacher, targets)}
    assert packed  # the hook does see the graph
    for t in packed:
        assert t.untyped_storage().data_ptr() in inputs or t.numel() <= N


def test_hidden_path_keeps_no_logits_for_backward():
    g = torch.Generator().manual_seed(3)
    h_s = torch.randn(N, 16, generator=g, requires_grad=True)
    w_s = torch.randn(V, 16, generator=g, requires_grad=True)
    h_t, w_t = torch.randn(N, 16, generator=g), torch.randn(V, 16, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    packed = saved_for_backward(
        lambda: divergence_from_hidden(h_s, h_t, w_s, w_t, targets, DivergenceSpec(chunk_size=CHUNK)))
    inputs = {x.untyped_storage().data_ptr() for x in (h_s, w_s, h_t, w_t, targets)}
    assert packed
    for t in packed:
        assert t.untyped_storage().data_ptr() in inputs or t.numel() <= N


# --- statistics ----------------------------------------------------------------------------------------

def test_per_token_kl_is_the_plain_forward_kl_whatever_the_loss():
    student, teacher, targets = random_case()
    expected = reference_per_token(student, teacher, targets, "forward_kl").float()
    for spec in (DivergenceSpec(kind="reverse_kl", top_k=5, clip=0.05, temperature=2.0, chunk_size=CHUNK),
                 DivergenceSpec(kind="jsd", beta=0.3, temperature=0.5, chunk_size=CHUNK),
                 DivergenceSpec(kind="sampled_token", temperature=1.3, chunk_size=CHUNK)):
        out = divergence_from_logits(student.clone().requires_grad_(), teacher, targets, spec)
        assert not out.per_token_kl.requires_grad
        torch.testing.assert_close(out.per_token_kl, expected, atol=1e-6, rtol=0)
    hidden = divergence_from_hidden(student, teacher, torch.eye(V, dtype=torch.float64),
                                    torch.eye(V, dtype=torch.float64), targets,
                                    DivergenceSpec(kind="reverse_kl", clip=0.05, chunk_size=CHUNK))
    torch.testing.assert_close(hidden.per_token_kl, expected, atol=1e-6, rtol=0)


def test_statistics_on_a_hand_made_case():
    # Logits are logs of unnormalised weights, so the probabilities are the weights over their sum.
    student = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 2.0]]).log()  # p_S = [1/6, 1/3, 1/2], [1/4, 1/4, 1/2]
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 4.0]]).log()  # p_T = [1/2, 1/3, 1/6], [1/6, 1/6, 2/3]
    targets = torch.tensor([1, 0])
    # The loss uses another divergence and temperature; the statistics must not.
    spec = DivergenceSpec(kind="reverse_kl", temperature=3.0)
    out = divergence_from_logits(student, teacher, targets, spec)
    assert out.top1_disagree.tolist() == [True, False]  # argmax 0 vs 2; 2 vs 2
    torch.testing.assert_close(out.student_token_prob, torch.tensor([1 / 3, 1 / 4]))
    kl_0 = 0.5 * math.log(3) + (1 / 6) * math.log(1 / 3)  # = ln(3) / 3
    kl_1 = (1 / 3) * math.log((1 / 6) / (1 / 4)) + (2 / 3) * math.log((2 / 3) / (1 / 2))
    torch.testing.assert_close(out.per_token_kl, torch.tensor([kl_0, kl_1]))
    assert out.top1_disagree.dtype == torch.bool and out.student_token_prob.dtype == torch.float32


# --- hand-made options ---------------------------------------------------------------------------------

def test_pointwise_clip_by_hand():
    # p_T = [0.9, 0.1], p_S = [0.5, 0.5]: entry 0 contributes 0.9 ln 1.8 = 0.529 > 0.05,
    # entry 1 contributes 0.1 ln 0.2 < 0.
    student = torch.tensor([[0.5, 0.5]]).log().requires_grad_()
    teacher = torch.tensor([[0.9, 0.1]]).log()
    targets = torch.tensor([0])
    unclipped = divergence_from_logits(student, teacher, targets, DivergenceSpec())
    torch.testing.assert_close(unclipped.loss_sum.item(), 0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    out = divergence_from_logits(student, teacher, targets, DivergenceSpec(clip=0.05))
    torch.testing.assert_close(out.loss_sum.item(), 0.05 + 0.1 * math.log(0.2))
    out.loss_sum.backward()
    # Only entry 1 passes gradient: d/ds [-p_T(1) log p_S(1)] = -0.1 (e_1 - p_S) = [0.05, -0.05].
    torch.testing.assert_close(student.grad, torch.tensor([[0.05, -0.05]]))


def test_top_k_by_hand():
    teacher = torch.tensor([[0.4, 0.1, 0.3, 0.2]]).log()  # top-2 ids {0, 2} -> p_T = [4/7, 3/7]
    student = torch.tensor([[0.1, 0.4, 0.3, 0.2]]).log()  # at ids {0, 2}: [0.1, 0.3] -> p_S = [1/4, 3/4]
    out = divergence_from_logits(student, teacher, torch.tensor([1]), DivergenceSpec(top_k=2))
    expected = (4 / 7) * math.log((4 / 7) / (1 / 4)) + (3 / 7) * math.log((3 / 7) / (3 / 4))
    torch.testing.assert_close(out.loss_sum.item(), expected)
    reverse = divergence_from_logits(student, teacher, torch.tensor([1]),
                                     DivergenceSpec(kind="reverse_kl", top_k=2))
    torch.testing.assert_close(reverse.loss_sum.item(),
                               0.25 * math.log(0.25 / (4 / 7)) + 0.75 * math.log(0.75 / (3 / 7)))


def test_sampled_token_by_hand():
    student = torch.tensor([[1.0, 3.0]]).log().requires_grad_()  # p_S(y=1) = 3/4
    teacher = torch.tensor([[1.0, 1.0]]).log()  # p_T(y=1) = 1/2
    out = divergence_from_logits(student, teacher, torch.tensor([1]), DivergenceSpec(kind="sampled_token"))
    advantage = math.log(0.5) - math.log(0.75)
    torch.testing.assert_close(out.loss_sum.item(), -advantage * math.log(0.75))
    out.loss_sum.backward()
    # The advantage is a constant: grad = -advantage * d log p_S(1)/ds = -advantage * (e_1 - p_S).
    torch.testing.assert_close(student.grad, torch.tensor([[-advantage * -0.25, -advantage * 0.25]]))


# --- identities ----------------------------------------------------------------------------------------

def test_jsd_end_points_are_exactly_forward_and_reverse_kl():
    student, teacher, targets = random_case(torch.float32)
    for beta, other in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
        jsd = divergence_from_logits(s1, teacher, targets,
                                     DivergenceSpec(kind="jsd", beta=beta, chunk_size=CHUNK))
        kl = divergence_from_logits(s2, teacher, targets, DivergenceSpec(kind=other, chunk_size=CHUNK))
        assert torch.equal(jsd.per_token_loss, kl.per_token_loss)
        jsd.loss_sum.backward()
        kl.loss_sum.backward()
        assert torch.equal(s1.grad, s2.grad)


@pytest.mark.parametrize("spec", [DivergenceSpec(), DivergenceSpec(kind="reverse_kl", top_k=5),
                                  DivergenceSpec(kind="jsd", beta=0.3, clip=0.05),
                                  DivergenceSpec(kind="sampled_token", temperature=0.5)],
                         ids=["fkl", "rkl", "jsd", "sampled"])
def test_loss_is_zero_when_student_equals_teacher(spec):
    student, _, targets = random_case(torch.float32)
    out = divergence_from_logits(student.clone().requires_grad_(), student, targets, spec)
    torch.testing.assert_close(out.per_token_loss, torch.zeros(N), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.per_token_kl, torch.zeros(N), atol=1e-6, rtol=0)
    assert not out.top1_disagree.any()


def test_empty_batch_returns_zeros_and_still_backpropagates():
    student = torch.zeros(0, V, requires_grad=True)
    no_targets = torch.zeros(0, dtype=torch.long)
    out = divergence_from_logits(student, torch.zeros(0, V), no_targets, DivergenceSpec())
    assert out.loss_sum.item() == 0.0 and out.per_token_loss.shape == (0,) and out.top1_disagree.shape == (0,)
    out.loss_sum.backward()
    head = torch.randn(V, 4, requires_grad=True)
    hidden = divergence_from_hidden(torch.zeros(0, 4), torch.zeros(0, 4), head, head.detach(),
                                    torch.zeros(0, dtype=torch.long), DivergenceSpec())
    hidden.loss_sum.backward()
    assert torch.equal(head.grad, torch.zeros(V, 4))


def test_no_grad_call_gives_the_same_values():
    student, teacher, targets = random_case()
    with_grad = divergence_from_logits(student.clone().requires_grad_(), teacher, targets,
                                       DivergenceSpec(chunk_size=CHUNK))
    with torch.no_grad():
        without = divergence_from_logits(student, teacher, targets, DivergenceSpec(chunk_size=CHUNK))
    assert not without.loss_sum.requires_grad
    torch.testing.assert_close(without.per_token_loss, with_grad.per_token_loss, atol=0, rtol=0)


# --- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "kl"}, "unknown divergence"),
    ({"beta": -0.1}, "beta"),
    ({"beta": 1.5}, "beta"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"clip": 0.0}, "clip"),
    ({"clip": -0.05}, "clip"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"kind": "sampled_token", "clip": 0.05}, "sampled_token"),
    ({"kind": "sampled_token", "top_k": 5}, "sampled_token"),
])
def test_bad_spec_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DivergenceSpec(**kwargs)


def test_bad_shapes_and_targets_raise():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    spec = DivergenceSpec()
    with pytest.raises(ValueError, match="numbers of positions N"):
        divergence_from_logits(s, torch.randn(5, 10), y, spec)
    with pytest.raises(ValueError, match="vocabulary sizes V"):
        divergence_from_logits(s, torch.randn(4, 11), y, spec)
    with pytest.raises(ValueError, match="2-D"):
        divergence_from_logits(s.unsqueeze(0), t.unsqueeze(0), y, spec)
    with pytest.raises(ValueError, match=r"targets must have shape \[N\]"):
        divergence_from_logits(s, t, y[:3], spec)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        divergence_from_logits(s, t, torch.tensor([0, 1, 2, 10]), spec)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        divergence_from_logits(s, t, torch.tensor([0, -1, 2, 3]), spec)
    with pytest.raises(ValueError, match="integer"):
        divergence_from_logits(s, t, y.float(), spec)
    with pytest.raises(ValueError, match="exceeds the vocabulary size"):
        divergence_from_logits(s, t, y, DivergenceSpec(top_k=11))

    h, w = torch.randn(4, 6), torch.randn(10, 6)
    with pytest.raises(ValueError, match="hidden size D"):
        divergence_from_hidden(h, h, torch.randn(10, 5), w, y, spec)
    with pytest.raises(ValueError, match="vocabulary sizes V"):
        divergence_from_hidden(h, h, w, torch.randn(11, 6), y, spec)
    with pytest.raises(ValueError, match="numbers of positions N"):
        divergence_from_hidden(h, torch.randn(3, 6), w, w, y, spec)
    with pytest.raises(ValueError, match="student_head_bias"):
        divergence_from_hidden(h, h, w, w, y, spec, student_head_bias=torch.randn(9))
