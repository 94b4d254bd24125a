"""AR-OPD's anchored-residual teacher: the combination by hand (the anchor at λ = 0, the full teacher at λ = 1, the
clip binding), the loss combining two teacher passes chunk by chunk as it would whole logits, and a training step
equal to OPSD's at λ = 1 and to fixed α = 0.5's at λ = 0."""

from __future__ import annotations

import pytest
import torch

from atesd.config import ConfigError, load_config
from atesd.losses import DivergenceSpec, divergence_from_hidden, divergence_from_logits
from atesd.train.forwards import AnchoredResidualMix, SecondPass, anchored_residual
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer


def test_the_anchor_at_weight_0_the_full_teacher_at_weight_1_and_the_clip_binds():
    generator = torch.Generator().manual_seed(0)
    anchor, full = torch.randn(5, 7, generator=generator, dtype=torch.float64), \
        torch.randn(5, 7, generator=generator, dtype=torch.float64)
    assert torch.allclose(anchored_residual(anchor, full, 0.0, 5.0), anchor.log_softmax(-1))
    assert torch.allclose(anchored_residual(anchor, full, 1.0, 5.0), full.log_softmax(-1))  # |residual| < 5 here
    mixed = anchored_residual(anchor, full, 0.6, 5.0)
    expected = (anchor.log_softmax(-1) + 0.6 * (full.log_softmax(-1) - anchor.log_softmax(-1))).log_softmax(-1)
    assert torch.allclose(mixed, expected) and torch.allclose(mixed.exp().sum(-1), torch.ones(5, dtype=torch.float64))
    # the tokens the full teacher all but rules out (19 nats below the anchor) move down by 5 at most
    anchor, full = torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[20.0, 0.0, 0.0]], dtype=torch.float64)
    anchor_logp, full_logp = anchor.log_softmax(-1), full.log_softmax(-1)
    residual = (full_logp - anchor_logp).clamp(-5, 5)
    assert float((full_logp - anchor_logp)[0, 1]) < -18 and residual[0, 1] == residual[0, 2] == -5.0
    assert float(residual[0, 0]) == pytest.approx(float(torch.log(torch.tensor(3.0))))  # unclipped
    assert torch.allclose(anchored_residual(anchor, full, 1.0, 5.0), (anchor_logp + residual).log_softmax(-1))
    assert not torch.allclose(anchored_residual(anchor, full, 1.0, 5.0), full_logp, atol=1e-3)
    assert anchored_residual(anchor.bfloat16(), full.bfloat16(), 0.6, 5.0).dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_the_loss_combines_two_teacher_passes_as_it_would_whole_logits(chunk_size):
    generator = torch.Generator().manual_seed(1)
    n, dim, vocab = 10, 4, 9
    student = torch.randn(n, dim, generator=generator, dtype=torch.float64, requires_grad=True)
    full, anchor = (torch.randn(n, dim, generator=generator, dtype=torch.float64) for _ in range(2))
    head = torch.randn(vocab, dim, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, vocab, (n,), generator=generator)
    spec = DivergenceSpec(chunk_size=chunk_size)
    mixed = divergence_from_hidden(student, full, head, head, targets, spec,
                                   teacher_mix=SecondPass(anchor, AnchoredResidualMix(0.5, 0.6, 1.0)))
    whole = divergence_from_logits(student @ head.T, anchored_residual(anchor @ head.T, full @ head.T, 0.6, 1.0),
                                   targets, spec)
    assert torch.allclose(mixed.loss_sum, whole.loss_sum) and torch.allclose(mixed.per_token_kl, whole.per_token_kl)
    (gradient,) = torch.autograd.grad(mixed.loss_sum, student)
    (expected,) = torch.autograd.grad(whole.loss_sum, student)
    assert torch.allclose(gradient, expected)
    plain = divergence_from_hidden(student, full, head, head, targets, spec)
    assert not torch.allclose(plain.loss_sum, mixed.loss_sum)
    with pytest.raises(ValueError, match="same positions"):
        divergence_from_hidden(student, full, head, head, targets, spec,
                               teacher_mix=SecondPass(anchor[:-1], AnchoredResidualMix(0.5, 0.6, 1.0)))


@pytest.mark.slow
def test_a_training_step_is_opsds_at_weight_1_and_fixed_half_exposures_at_weight_0(tiny_config, tmp_path):
    """The first step of each run starts from the same weights, data and rollouts: with an unbinding clip, λ = 1
    distils OPSD's teacher and λ = 0 the teacher at α = 0.5, at the price of one more teacher forward."""

    def first_step(name: str, *overrides: str) -> dict:
        trainer = Trainer(tiny_config(tmp_path, f"run.name={name}", "train.steps=1", *overrides))
        trainer.train()
        return read_metrics(trainer.run_dir / "metrics.jsonl")[0]

    opsd, half = first_step("opsd"), first_step("half", "exposure.alpha=0.5")
    full = first_step("full", "teacher.anchored_residual={residual_weight: 1.0, residual_clip: 1.0e6}")
    anchor = first_step("anchor", "teacher.anchored_residual={residual_weight: 0.0}")
    for row, same in ((full, opsd), (anchor, half)):
        for key in ("loss", "kl_mean", "kl_p90", "top1_disagree"):
            assert row[key] == pytest.approx(same[key], rel=1e-4, abs=1e-6), key
        assert row["forward_tokens"] > same["forward_tokens"]
    assert opsd["loss"] != pytest.approx(half["loss"], rel=1e-3)
    assert full["alpha"] == 1.0  # the full teacher is the step's exposure: OPSD's α = 1


@pytest.mark.parametrize("override,message", [
    ("teacher.anchored_residual.residual_weight=1.5", "teacher.anchored_residual.residual_weight:"),
    ("teacher.anchored_residual.anchor_alpha=-0.1", "teacher.anchored_residual.anchor_alpha:"),
    ("teacher.anchored_residual.residual_clip=0", "teacher.anchored_residual.residual_clip:"),
    ("teacher.anchored_residual.lam=0.6", "teacher.anchored_residual.lam: unknown key"),
])
def test_bad_anchored_residual_settings_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])
    assert load_config(None, ["teacher.anchored_residual={}"]).teacher.anchored_residual.residual_weight == 0.6


def test_the_anchored_residual_needs_a_distillation_method():
    with pytest.raises(ConfigError, match="method 'grpo' has none"):
        load_config(None, ["method=grpo", "teacher.anchored_residual={}"])
