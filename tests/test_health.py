"""The embedded base model's health check: an out-of-band model is refused with its figures and what to do,
never trained on silently; the verdict is cached beside the model."""

from __future__ import annotations

import pytest
from conftest import EMBEDDED_CONFIG, TINY_MODEL_OVERRIDES

from atesd.cli import main
from atesd.config import load_config
from atesd.experiments.health import HEALTH_FILE, HealthReport, UnhealthyBaseModelError, load_health
from atesd.experiments.warm_start import embedded_base_model

# The tiny test model (5 warm-start steps) is far outside the band: it solves nothing.
UNDER_TRAINED = (*TINY_MODEL_OVERRIDES, "model.embedded.health_check=true", "model.embedded.health_problems=8",
                 "model.embedded.health_samples=1", "eval.max_new_tokens=16")


def report(student: float, teacher: float) -> HealthReport:
    return HealthReport(student, teacher, problems=100, samples=4, student_range=(0.2, 0.55), min_gap=0.1)


def test_the_band_by_hand():
    assert report(0.30, 0.45).healthy
    assert report(0.19, 0.90).problems_found == ["the student's 19.0% is outside [20%, 55%]"]
    assert report(0.56, 0.90).problems_found == ["the student's 56.0% is outside [20%, 55%]"]
    assert report(0.30, 0.39).problems_found == ["the teacher's lead of +9.0% is below 10%"]
    assert "healthy" in report(0.30, 0.45).summary() and "OUT OF BAND" in report(0.1, 0.1).summary()


@pytest.mark.slow
def test_an_under_trained_base_model_is_refused_with_its_figures(tmp_path):
    config = load_config(EMBEDDED_CONFIG, [f"model.embedded.cache_dir={tmp_path}", *UNDER_TRAINED])
    with pytest.raises(UnhealthyBaseModelError) as refused:
        embedded_base_model(config)
    message = str(refused.value)
    assert "not a usable testbed" in message and "student 0.0%" in message
    assert "model.embedded.seed" in message and "model.embedded.health_check=false" in message
    (model_dir,) = tmp_path.glob("embedded-*")
    assert load_health(model_dir) == load_health(model_dir) and not load_health(model_dir).healthy
    # the verdict is cached: a second request refuses at once, from health.json, without a new warm start
    stamp = (model_dir / HEALTH_FILE).stat().st_mtime_ns
    with pytest.raises(UnhealthyBaseModelError):
        embedded_base_model(config)
    assert (model_dir / HEALTH_FILE).stat().st_mtime_ns == stamp
    # asked for explicitly, the model is used anyway
    unchecked = config.model_copy(deep=True)
    unchecked.model.embedded.health_check = False
    assert embedded_base_model(unchecked) == model_dir


@pytest.mark.slow
def test_the_cli_refuses_an_out_of_band_model_in_one_line(tmp_path, capsys):
    overrides = [f"model.embedded.cache_dir={tmp_path}", *UNDER_TRAINED, f"run.output_dir={tmp_path / 'runs'}",
                 "train.steps=1"]
    assert main(["train", str(EMBEDDED_CONFIG), *overrides]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("atesd: error: the embedded base model in") and "Traceback" not in error


@pytest.mark.slow
def test_testbed_reports_every_warm_start_seed_with_its_verdict_and_resumes(tmp_path, capsys):
    out = tmp_path / "testbed"
    args = ["testbed", str(EMBEDDED_CONFIG), f"model.embedded.cache_dir={tmp_path / 'cache'}", *UNDER_TRAINED,
            "eval.num_samples=2", "--base-models", "2", "--out", str(out)]
    assert main(args) == 0
    table = (out / "testbed.md").read_text()
    assert "Command: `atesd testbed" in table and "0/2 seeds in band" in table
    assert table.count("OUT: the student's 0.0% is outside [20%, 55%]") == 2
    assert len(list((tmp_path / "cache").glob("embedded-*"))) == 2  # one base model per warm-start seed
    rows = (out / "testbed.csv").read_text().splitlines()
    assert rows[0].startswith("seed,student,teacher,ops=2_student") and len(rows) == 3
    capsys.readouterr()
    assert main(args) == 0  # both seeds done: nothing is redone
    assert "warm-start seed" not in capsys.readouterr().out


@pytest.mark.parametrize(("accuracy", "checks"), [(1.0, 1), (0.0, 3)])
def test_the_warm_start_stops_once_the_student_reaches_its_target(tmp_path, monkeypatch, accuracy, checks):
    import atesd.experiments.warm_start as warm_start_module

    calls = []

    def measured(*args, **kwargs):
        calls.append(1)
        return accuracy

    monkeypatch.setattr(warm_start_module, "heldout_accuracy", measured)
    config = load_config(EMBEDDED_CONFIG, [*TINY_MODEL_OVERRIDES, "model.embedded.warm_start_steps=6",
                                           "model.embedded.warm_start_check_every=2",
                                           "model.embedded.warm_start_target_accuracy=0.4"])
    warm_start_module.warm_start(config)
    assert len(calls) == checks  # reached at the first check (step 2); never reached: checked at 2, 4 and 6
