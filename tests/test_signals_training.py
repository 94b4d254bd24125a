"""Our exposure signals in real training on the tiny embedded model: the style probe is the base model's right
solutions and its NLL is measured like the probe's; each problem's alignment credit equals its exact gradient's
dot product with the unit probe gradient; a resumed run measures the same; and `atesd diagnose` reports them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from atesd.cli import main
from atesd.config import save_config
from atesd.losses import divergence_from_hidden
from atesd.train.forwards import AnchoredResidualMix, SecondPass, StepCost
from atesd.train.metrics import read_metrics
from atesd.train.recipe import Trainer
from atesd.train.signals import unit, without_padding_rows

pytestmark = pytest.mark.slow  # trains models end to end

ALIGNED = ("exposure.policy=random", "exposure.per_problem=true", "exposure.controller.credit=alignment")
TIMINGS = {"rollout_time", "teacher_time", "update_time", "probe_time", "exposure_time", "step_time"}


def even_length(text: str, gold: str) -> SimpleNamespace:
    """A grader that the tiny model passes half the time: a completion is 'right' when its text has even length."""
    return SimpleNamespace(correct=len(text) % 2 == 0)


def test_the_style_probe_holds_the_base_models_right_solutions_and_its_nll_is_logged(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "run.name=style", "exposure.policy=random", "train.steps=2",
                         "exposure.controller.progress_signal=style_nll", "exposure.controller.style_probe_samples=3")
    trainer = Trainer(config, grader=even_length)
    student = trainer.student
    trainer.signals.start(trainer.sampler)  # sampled and measured from the base weights
    probe = trainer.signals.probe
    text = [trainer.tokenizer.decode(ids, skip_special_tokens=True) for ids in probe.completions]
    assert probe.completions and all(len(t) % 2 == 0 for t in text)  # only the 'right' ones are kept
    assert len(probe.completions) <= 3 * len(trainer.probe_problems)
    prompts = {tuple(trainer.prompts.student(p)) for p in trainer.probe_problems}
    assert {tuple(prompt) for prompt in probe.prompts} <= prompts
    # the mean NLL per token, by hand from the model's logits
    model = trainer.unwrapped
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, ids in zip(probe.prompts, probe.completions):
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1]
            total -= float(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(ids)[:, None]).sum())
            count += len(ids)
    assert trainer.signals.last_style_nll == pytest.approx(total / count, rel=1e-5)
    assert student.sequences_nll(probe.prompts, probe.completions) == pytest.approx(total / count, rel=1e-5)
    trainer.train()
    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    assert rows[0]["style_nll_before"] == pytest.approx(total / count, rel=1e-5)
    assert rows[1]["style_nll_before"] == rows[0]["style_nll"] != rows[0]["style_nll_before"]
    assert rows[0]["style_probe_size"] == len(probe.completions)


def test_each_problems_alignment_credit_is_its_gradients_dot_product_with_the_unit_probe_gradient(tiny_config,
                                                                                                  tmp_path):
    config = tiny_config(tmp_path, "run.name=aligned", *ALIGNED, "exposure.controller.alignment_probe=reference")
    trainer = Trainer(config, grader=even_length)
    # in float64, so that a step of 1e-5 leaves no curvature: the untrained tiny model is far more curved along
    # the probe gradient than the embedded one, for which EPSILON is (its note); the per-token losses stay float32
    trainer.unwrapped.double()
    trainer.teacher.weights.copy.double()
    student = trainer.student
    problems = trainer.train_problems[:4]
    prompts = [trainer.prompts.student(p) for p in problems]
    rollouts = trainer.sampler.sample(prompts, problems, torch.Generator().manual_seed(0), StepCost())
    completions = rollouts.completion_ids
    alphas = [0.1, 0.4, 0.7, 1.0]
    teacher = trainer.teacher.targets(problems, alphas, completions, False, StepCost())
    scale = 1.0 / rollouts.num_tokens
    signals = trainer.signals
    signals.epsilon = 1e-5
    spans = student.spans(len(problems))

    def step_loss(span):
        return trainer.step_loss(prompts[span], completions[span], teacher, span.start, StepCost())

    signals.perturbed(0, spans, step_loss, completions, scale, StepCost())
    at = [step_loss(span).per_token_loss for span in spans]  # the update's own forward, at the weights before it
    credits, record = signals.credits(torch.cat(at), completions, scale, alphas)
    assert record["alignment"] == credits and record["problem_alpha"] == alphas and len(credits) == 4

    parameters = [p for p in trainer.unwrapped.parameters() if p.requires_grad]
    gradient = student.nll_gradient([trainer.prompts.student(p) for p in trainer.probe_problems],
                                    [trainer.prompts.solution(p) for p in trainer.probe_problems], parameters,
                                    StepCost())
    whole = unit(gradient)[1]
    direction, norm = unit(without_padding_rows(trainer.unwrapped, parameters, gradient))
    assert record["probe_grad_norm"] == pytest.approx(norm)
    assert norm < whole  # the tied head gave the pad row a gradient; its embedding row gets none
    for span in spans:  # each problem alone: its loss, its exact gradient
        offsets = [0]
        for ids in completions[span]:
            offsets.append(offsets[-1] + len(ids))
        for index in range(span.start, span.stop):
            local = index - span.start
            batch = student.packed([prompts[index]], [completions[index]], StepCost())
            head, bias = student.head()
            out = trainer.divergence(student.hidden(batch),
                                     teacher.hidden[span.start][offsets[local]:offsets[local + 1]], head, teacher.head,
                                     batch.targets, trainer.divergence_spec, bias, teacher.bias)
            gradient = torch.autograd.grad(out.loss_sum * scale, parameters, allow_unused=True)
            exact = sum(float((g * d).sum()) for g, d in zip(gradient, direction) if g is not None)
            assert credits[index] == pytest.approx(exact, rel=0.03)


def test_a_resumed_run_measures_the_same_signals(tiny_config, tmp_path):
    common = (*ALIGNED, "exposure.controller.progress_signal=style_nll", "train.checkpoint_every=2")
    straight = Trainer(tiny_config(tmp_path, "run.name=a", "train.steps=4", *common), grader=even_length)
    straight.train()
    Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=2", *common), grader=even_length).train()
    resumed = Trainer(tiny_config(tmp_path, "run.name=b", "train.steps=4", *common), grader=even_length, resume=True)
    assert resumed.signals.probe == straight.signals.probe  # from the checkpoint, not sampled again
    resumed.train()
    rows_a = read_metrics(straight.run_dir / "metrics.jsonl")
    rows_b = read_metrics(resumed.run_dir / "metrics.jsonl")
    assert [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows_a] == \
        [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows_b]
    assert all(len(row["alignment"]) == 4 and row["style_nll"] is not None for row in rows_a)


def test_diagnose_reports_the_alignment_credit_and_the_style_probes_estimators(tiny_config, tmp_path, capsys):
    config = tiny_config(tmp_path, "run.name=pp", *ALIGNED, "exposure.controller.progress_signal=style_nll",
                         "train.steps=6", "train.checkpoint_every=6")
    save_config(config, tmp_path / "pp.yaml")
    Trainer(config, grader=even_length).train()
    run = tmp_path / "runs" / "pp"
    assert main(["diagnose", str(run), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "### Each problem's alignment credit on its own α" in printed
    assert "| style NLL TSCL slope |" in printed and "| probe NLL ALP |drop| |" in printed
    fits = json.loads((tmp_path / "out" / "diagnose.json").read_text())["fits"]
    within = next(row for row in fits if row["table"] == "alignment_within_step")
    assert within["n"] == 6 * 4  # four problems a step, six steps
    assert main(["diagnose", str(run), "--steps", "3", "--out", str(tmp_path / "first")]) == 0
    fits = json.loads((tmp_path / "first" / "diagnose.json").read_text())["fits"]
    assert next(row for row in fits if row["table"] == "alignment_within_step")["n"] == 3 * 4
    capsys.readouterr()
    assert main(["diagnose", str(run), "--steps", "60", "--out", str(tmp_path / "all")]) == 0  # a no-op, said so
    assert "atesd: warning: --steps 60 keeps every update of these runs (the longest has 6)" in capsys.readouterr().out


def test_the_contrast_probe_pushes_towards_the_right_solutions_and_away_from_the_wrong_ones(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "run.name=contrast", *ALIGNED, "exposure.controller.alignment_probe=contrast")
    trainer = Trainer(config, grader=even_length)
    trainer.signals.start(trainer.sampler)
    probe, student = trainer.signals.probe, trainer.student
    assert probe.completions and probe.wrong_completions and trainer.signals.last_style_nll is None  # not logged
    assert all(len(trainer.tokenizer.decode(ids, skip_special_tokens=True)) % 2 == 1 for ids in probe.wrong_completions)
    parameters = [p for p in trainer.unwrapped.parameters() if p.requires_grad]
    right = student.nll_gradient(probe.prompts, probe.completions, parameters, StepCost())
    wrong = student.nll_gradient(probe.wrong_prompts, probe.wrong_completions, parameters, StepCost())
    contrast = trainer.signals.probe_gradient(parameters, StepCost())
    assert all(torch.allclose(c, r - w) for c, r, w in zip(contrast, right, wrong))
    trainer.signals.load_state_dict(trainer.signals.state_dict())  # the wrong ones go into checkpoints too
    assert trainer.signals.probe == probe


def test_the_alignment_credit_measures_the_objective_being_trained_with_ar_opds_teacher(tiny_config, tmp_path):
    """The update and the credit's perturbed losses are the same step loss: with AR-OPD's anchored residual, both
    see the mixed teacher (the credit's probe once dropped the mix, and measured another objective)."""
    mixes = []

    def recording(*args, teacher_mix=None, **kwargs):
        mixes.append(teacher_mix)
        return divergence_from_hidden(*args, teacher_mix=teacher_mix, **kwargs)

    # every exposure the policy draws above the anchor (0.5), where AR-OPD's residual points towards more exposure
    config = tiny_config(tmp_path, "run.name=ar-opd", *ALIGNED, "exposure.alpha_min=0.6",
                         "teacher.anchored_residual={}", "train.steps=1")
    trainer = Trainer(config, grader=even_length, divergence=recording)
    spans = len(trainer.student.spans(config.train.batch_size))
    trainer.train()
    assert len(mixes) == 2 * spans  # the perturbed losses, then the update's
    assert all(isinstance(mix, SecondPass) and isinstance(mix.mix, AnchoredResidualMix) for mix in mixes)
    assert read_metrics(trainer.run_dir / "metrics.jsonl")[0]["alignment_mean"] is not None
