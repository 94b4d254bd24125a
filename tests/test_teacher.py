"""Teacher weights: frozen initial copy, live student, EMA with exact update rule; no grad, modes restored."""

from __future__ import annotations

import pytest
import torch

from atesd.models.teacher import TeacherWeights
from atesd.models.tiny import build_char_tokenizer, build_tiny_model

DECAY = 0.9


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def tiny_model(tokenizer, seed: int = 0) -> torch.nn.Module:
    model = build_tiny_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=32, max_positions=64, seed=seed)
    return model.train()


def inputs(tokenizer) -> torch.Tensor:
    ids = tokenizer(["Compute 1+2*3.", "Compute 9-4+1."], add_special_tokens=False)["input_ids"]
    return torch.tensor(ids)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train_steps(model: torch.nn.Module, ids: torch.Tensor, steps: int, teacher: TeacherWeights | None = None,
                lr: float = 1e-2) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if teacher is not None:
            teacher.after_optimizer_step()


def teacher_logits(teacher: TeacherWeights, ids: torch.Tensor) -> torch.Tensor:
    with teacher.scoring() as model:
        return model(input_ids=ids).logits


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [name for name in before if not torch.equal(before[name], after[name])]


def test_initial_teacher_stays_at_starting_weights(tokenizer):
    student = tiny_model(tokenizer)
    ids = inputs(tokenizer)
    teacher = TeacherWeights(student, "initial")
    start_params = params(student)
    with torch.no_grad():
        student.eval()
        start_logits = student(input_ids=ids).logits
        student.train()
    assert torch.equal(teacher_logits(teacher, ids), start_logits)

    train_steps(student, ids, 3, teacher)

    assert changed(start_params, params(student)), "the student should have moved"
    assert torch.equal(teacher_logits(teacher, ids), start_logits)
    with teacher.scoring() as model:
        assert model is not student
        assert not changed(start_params, params(model))
        assert not any(p.requires_grad for p in model.parameters())
    student_logits = student(input_ids=ids).logits
    assert not torch.allclose(student_logits, start_logits)
    assert teacher.state_dict() == {}  # nothing to save: the copy is re-made from the base model


def test_live_teacher_is_the_current_student(tokenizer):
    student = tiny_model(tokenizer)
    ids = inputs(tokenizer)
    teacher = TeacherWeights(student, "live")
    assert teacher.copy is None
    before = teacher_logits(teacher, ids)

    train_steps(student, ids, 2, teacher)

    after = teacher_logits(teacher, ids)
    assert not torch.allclose(after, before)
    student.eval()
    with torch.no_grad():
        assert torch.equal(after, student(input_ids=ids).logits)
    student.train()
    with teacher.scoring() as model:
        assert model is student


def test_ema_teacher_follows_update_rule(tokenizer):
    student = tiny_model(tokenizer)
    ids = inputs(tokenizer)
    teacher = TeacherWeights(student, "ema", ema_decay=DECAY)
    name = "model.layers.0.mlp.up_proj.weight"
    ema0 = dict(student.named_parameters())[name].detach().clone().double()

    def ema_param() -> torch.Tensor:
        return dict(teacher.copy.named_parameters())[name].detach().double()

    def student_param() -> torch.Tensor:
        return dict(student.named_parameters())[name].detach().clone().double()

    assert torch.equal(ema_param(), ema0)

    train_steps(student, ids, 1, teacher)
    s1 = student_param()
    expected1 = DECAY * ema0 + (1 - DECAY) * s1
    assert not torch.allclose(s1, ema0)
    torch.testing.assert_close(ema_param(), expected1, rtol=0, atol=1e-7)
    assert not torch.allclose(ema_param(), s1) and not torch.allclose(ema_param(), ema0)

    train_steps(student, ids, 1, teacher)
    s2 = student_param()
    expected2 = DECAY * expected1 + (1 - DECAY) * s2
    torch.testing.assert_close(ema_param(), expected2, rtol=0, atol=1e-7)
    torch.testing.assert_close(ema_param(), 0.81 * ema0 + 0.09 * s1 + 0.1 * s2, rtol=0, atol=1e-7)

    # every parameter, not only the one checked above, moved by the same rule
    for (t_name, t_param), (s_name, s_param) in zip(teacher.copy.named_parameters(), student.named_parameters()):
        assert t_name == s_name
        assert not torch.equal(t_param, s_param)


def test_ema_state_round_trips(tokenizer):
    student = tiny_model(tokenizer)
    ids = inputs(tokenizer)
    teacher = TeacherWeights(student, "ema", ema_decay=DECAY)
    train_steps(student, ids, 2, teacher)
    state = teacher.state_dict()
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())

    fresh = TeacherWeights(tiny_model(tokenizer), "ema", ema_decay=DECAY)
    fresh.load_state_dict(state)
    assert torch.equal(teacher_logits(fresh, ids), teacher_logits(teacher, ids))


@pytest.mark.parametrize("weights", ["initial", "live", "ema"])
def test_scoring_has_no_grad_and_restores_train_mode(tokenizer, weights):
    student = tiny_model(tokenizer)
    ids = inputs(tokenizer)
    teacher = TeacherWeights(student, weights, ema_decay=DECAY)
    assert student.training
    with teacher.scoring() as model:
        assert not model.training
        assert not torch.is_grad_enabled()
        logits = model(input_ids=ids).logits
    assert not logits.requires_grad
    assert logits.grad_fn is None
    assert torch.is_grad_enabled()
    assert student.training
    assert all(module.training for module in student.modules())


def test_live_scoring_restores_train_mode_after_an_error(tokenizer):
    student = tiny_model(tokenizer)
    teacher = TeacherWeights(student, "live")
    with pytest.raises(RuntimeError, match="boom"), teacher.scoring():
        assert not student.training
        raise RuntimeError("boom")
    assert student.training


def test_after_optimizer_step_is_a_no_op_for_initial_and_live(tokenizer):
    for weights in ("initial", "live"):
        student = tiny_model(tokenizer)
        teacher = TeacherWeights(student, weights)
        with teacher.scoring() as model:
            before = params(model)
        train_steps(student, inputs(tokenizer), 1)
        teacher.after_optimizer_step()
        if weights == "initial":
            assert not changed(before, params(teacher.copy))
        else:
            assert changed(before, params(student))
