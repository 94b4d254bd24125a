"""FSDP2 sharded training under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` with 2 CPU processes
(gloo): for full fine-tuning (an ATESD controller, the EMA teacher as a sharded copy) and for LoRA (the initial
teacher with the adapter disabled, a merged final model), 3 steps sharded match the same 3 steps under DDP; an
interrupted sharded run resumes exactly; a sharded run's checkpoint resumes under DDP and the reverse."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from atesd.config import save_config
from atesd.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("fsdp_worker.py")
STEPS = 3
# Controller decisions before every update and learning every 2 (as in test_distributed.py): α moves each step.
CONTROLLER = ("method=atesd", "exposure.policy=controller", "exposure.hold_steps=1", "exposure.controller.lookahead=1",
              "exposure.controller.decisions_per_update=2", "exposure.controller.lr=0.1",
              "exposure.controller.hidden_sizes=[8]")
RUN = (f"train.steps={STEPS}", "train.checkpoint_every=2", "train.keep_checkpoints=3", "train.batch_size=4",
       "train.micro_batch_size=1")
LORA = ("model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj], save_merged: true}", "train.lr=5e-3")
# Logged numbers that must agree between the two ways of running (rollouts, α, statistics, the update).
COMPARED = ("loss", "kl_mean", "kl_p90", "probe_nll", "teacher_ref_logp", "alpha", "rollout_accuracy",
            "completion_length", "generated_tokens", "grad_norm", "lr")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_config, tmp_path_factory):
    """Every run in one launch of 2 processes (one start-up for all): name -> (run directory, trained weights)."""
    root = tmp_path_factory.mktemp("fsdp")
    jobs = []

    def job(name: str, fsdp: bool, overrides: tuple[str, ...], resume_from: str | None = None) -> None:
        config = tiny_config(root, f"run.name={name}", *RUN, *overrides)
        save_config(config, root / f"{name}.yaml")
        jobs.append({"name": name, "config": str(root / f"{name}.yaml"), "fsdp": fsdp, "resume_from": resume_from})

    full = (*CONTROLLER, "teacher.weights=ema", "teacher.ema_decay=0.5")
    job("ddp", False, full)
    job("fsdp", True, full)
    job("fsdp-resumed", True, full, resume_from="fsdp")
    job("ddp-from-fsdp", False, full, resume_from="fsdp")
    job("fsdp-from-ddp", True, full, resume_from="ddp")
    job("ddp-lora", False, LORA)
    job("fsdp-lora", True, LORA)
    (root / "jobs.json").write_text(json.dumps(jobs))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
               "--main_process_port", str(free_port()), str(WORKER), str(root / "jobs.json")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return {entry["name"]: (root / "runs" / entry["name"],
                            [load_file(str(root / f"{entry['name']}.rank{r}.safetensors")) for r in range(2)])
            for entry in jobs}


def logged(run_dir: Path) -> list[dict]:
    return [{key: row[key] for key in COMPARED if key in row} for row in read_metrics(run_dir / "metrics.jsonl")]


def assert_close_runs(a, b, weight_tolerance: float = 1e-5) -> None:
    (dir_a, weights_a), (dir_b, weights_b) = a, b
    rows_a, rows_b = logged(dir_a), logged(dir_b)
    assert len(rows_a) == len(rows_b) == STEPS
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            expected = row_b[key] if row_b[key] is None else pytest.approx(row_b[key], rel=1e-4, abs=1e-6)
            assert row_a[key] == expected, key
    assert weights_a[0].keys() == weights_b[0].keys()
    for name in weights_a[0]:
        torch.testing.assert_close(weights_a[0][name], weights_b[0][name], rtol=0, atol=weight_tolerance)


@pytest.mark.parametrize("kind", ["", "-lora"])
def test_sharded_steps_match_ddp(runs, kind):
    assert_close_runs(runs[f"fsdp{kind}"], runs[f"ddp{kind}"])
    alphas = [row["alpha"] for row in logged(runs["fsdp"][0])]
    assert len(set(alphas)) == STEPS  # the controller decided anew each step, the same under both


def test_every_process_ends_with_the_same_whole_weights(runs):
    for name in ("fsdp", "fsdp-lora"):
        first, second = runs[name][1]
        assert all(torch.equal(first[key], second[key]) for key in first)


def test_an_interrupted_sharded_run_resumes_exactly(runs):
    (full_dir, full_weights), (resumed_dir, resumed_weights) = runs["fsdp"], runs["fsdp-resumed"]
    assert logged(resumed_dir) == logged(full_dir)
    assert all(torch.equal(full_weights[0][key], resumed_weights[0][key]) for key in full_weights[0])


@pytest.mark.parametrize(("resumed", "uninterrupted"), [("ddp-from-fsdp", "ddp"), ("fsdp-from-ddp", "fsdp")])
def test_a_checkpoint_resumes_under_the_other_distribution(runs, resumed, uninterrupted):
    assert_close_runs(runs[resumed], runs[uninterrupted])


def test_final_models_are_plain_pretrained_directories(runs):
    run_dir, weights = runs["fsdp"]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
    state = model.state_dict()
    assert all(torch.equal(state[name], weights[0][name]) for name in weights[0])
    merged = {name: load_file(str(runs[name][0] / "final_model_merged" / "model.safetensors"))
              for name in ("fsdp-lora", "ddp-lora")}
    assert merged["fsdp-lora"].keys() == merged["ddp-lora"].keys()
    for name in merged["ddp-lora"]:
        torch.testing.assert_close(merged["fsdp-lora"][name], merged["ddp-lora"][name], rtol=0, atol=1e-5)
    adapter = load_file(str(runs["fsdp-lora"][0] / "final_model" / "adapter_model.safetensors"))
    assert len(adapter) == len(runs["fsdp-lora"][1][0])
