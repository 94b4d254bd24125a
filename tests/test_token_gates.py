"""The per-token teachers (docs/method.md#exposure-per-token): the agreement gate (AVSD's manner) and the entropy
gate (EGRSD's), their gates recomputed by hand, their limits, a training step through the recipe, and their
refusals."""

from __future__ import annotations

import math

import pytest
import torch

from atesd.config import ConfigError, load_config
from atesd.exposure.agreement_gate import AgreementMix, agreement
from atesd.exposure.entropy_gate import EntropyMix, confidence
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer

torch.manual_seed(0)
TEACHER, VIEW = torch.randn(6, 11, dtype=torch.float64) * 2, torch.randn(6, 11, dtype=torch.float64) * 2


def by_hand(teacher: torch.Tensor, view: torch.Tensor, gate: list[float], clip: float) -> torch.Tensor:
    """log q of each row from the formula, one row at a time, in float64."""
    rows = []
    for t, v, g in zip(teacher, view, gate):
        lt, lv = t.log_softmax(-1), v.log_softmax(-1)
        rows.append((lv + g * (lt - lv).clamp(-clip, clip)).log_softmax(-1))
    return torch.stack(rows)


def test_the_agreement_is_one_minus_the_normalised_jensen_shannon_divergence():
    p, q = TEACHER.log_softmax(-1), VIEW.log_softmax(-1)
    m = 0.5 * (p.exp() + q.exp())
    jsd = 0.5 * (p.exp() * (p - m.log())).sum(-1) + 0.5 * (q.exp() * (q - m.log())).sum(-1)
    assert torch.allclose(agreement(p, q), 1 - jsd / math.log(2))
    assert torch.allclose(agreement(p, p), torch.ones(6, dtype=torch.float64))
    apart = torch.tensor([[0.0, -1e4], [-1e4, 0.0]], dtype=torch.float64)  # two one-hots on different tokens
    assert agreement(apart[:1], apart[1:]).item() == pytest.approx(0.0, abs=1e-9)


def test_the_agreement_gate_recomputed_by_hand():
    mix = AgreementMix(view_alpha=0.5, floor=0.25, clip=1.5)
    gate = (0.25 + 0.75 * agreement(TEACHER.log_softmax(-1), VIEW.log_softmax(-1))).tolist()
    assert torch.allclose(mix.combine(TEACHER, VIEW), by_hand(TEACHER, VIEW, gate, 1.5))
    # views that agree give the privileged teacher; the gate never goes under the floor
    assert torch.allclose(mix.combine(TEACHER, TEACHER + 3.0), TEACHER.log_softmax(-1))
    assert min(gate) >= 0.25


def test_the_entropy_gate_recomputed_by_hand():
    mix = EntropyMix(view_alpha=0.25, floor=0.3, clip=2.0)
    logp = TEACHER.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    gate = (1 - entropy / math.log(11)).clamp(min=0.3).tolist()
    assert torch.allclose(mix.combine(TEACHER, VIEW), by_hand(TEACHER, VIEW, gate, 2.0))
    assert confidence(torch.full((1, 8), -math.log(8), dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.tensor([[0.0, -1e4, -1e4]], dtype=torch.float64)
    assert confidence(one_hot).item() == pytest.approx(1.0)
    # a confident teacher is taken; a uniform one leaves the target at the floor's share of it
    assert torch.allclose(mix.combine(one_hot * 1.0, torch.zeros(1, 3, dtype=torch.float64)),
                          by_hand(one_hot, torch.zeros(1, 3, dtype=torch.float64), [1.0], 2.0))


def test_the_gates_work_in_low_precision_and_on_the_loss_chunks():
    for mix in (AgreementMix(0.5, 0.25, 5.0), EntropyMix(0.5, 0.25, 5.0)):
        out = mix.combine(TEACHER.to(torch.bfloat16), VIEW.to(torch.bfloat16))
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.allclose(out.exp().sum(-1), torch.ones(6), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["agreement_gate", "entropy_gate"])
def test_a_training_step_with_a_gate_at_the_view_or_the_teacher(tiny_config, tmp_path, policy):
    """Through the recipe: the first step starts from the same weights, data and rollouts. A gate pinned at 1
    (views that agree, or a floor of almost 1 with an unbinding clip) distils OPSD's teacher; the gate's own run
    differs from it and costs one more teacher forward, as AR-OPD's (its gate is recomputed by hand above)."""

    def first_step(name: str, *overrides: str) -> dict:
        trainer = Trainer(tiny_config(tmp_path, f"run.name={name}", "train.steps=1", *overrides))
        trainer.train()
        return read_metrics(trainer.run_dir / "metrics.jsonl")[0]

    opsd = first_step("opsd")
    pinned = first_step("pinned", f"exposure.policy={policy}", "exposure.floor=0.999999", "exposure.clip=1e6")
    gated = first_step("gated", f"exposure.policy={policy}")
    for key in ("loss", "kl_mean", "top1_disagree"):
        assert pinned[key] == pytest.approx(opsd[key], rel=1e-4, abs=1e-6), key
    assert gated["loss"] != opsd["loss"]  # the untrained tiny teacher's views nearly agree: a small difference
    assert gated["alpha"] == opsd["alpha"] == 1.0
    assert gated["forward_tokens"] > opsd["forward_tokens"] and gated["forward_tokens"] == pinned["forward_tokens"]


@pytest.mark.parametrize("overrides,message", [
    (["exposure.policy=agreement_gate", "exposure.view_alpha=1"], "view_alpha 1 is not below alpha 1"),
    (["exposure.policy=entropy_gate", "exposure.alpha=0.5", "exposure.view_alpha=0.5"],
     "view_alpha 0.5 is not below alpha 0.5"),
    (["exposure.policy=agreement_gate", "exposure.floor=1"], "exposure.floor"),
    (["exposure.policy=entropy_gate", "teacher.anchored_residual={}", "teacher.anchored_residual.anchor_alpha=0.25"],
     "a teacher takes one second view"),
    (["exposure.policy=agreement_gate", "method=grpo"], "method 'grpo' takes exposure.policy fixed"),
])
def test_gate_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
