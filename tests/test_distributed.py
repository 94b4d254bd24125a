"""The loop under ``accelerate launch`` with 2 CPU processes (gloo), training ATESD: one α for both (the main
process's controller decides), identical weights, statistics combined across processes before the controller
sees them, and checkpoint + resume equal to an uninterrupted run; DeepSpeed refused with a message (FSDP2:
test_fsdp.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atesd.config import save_config
from atesd.train.checkpoint import LATEST
from atesd.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # trains models end to end (`pytest -m "not slow"` skips it)

WORKER = Path(__file__).with_name("distributed_worker.py")
STEPS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config_path: Path, out_dir: Path, *flags: str) -> None:
    """``accelerate launch`` of the worker on 2 CPU processes (``--multi_gpu`` picks torchrun; the CPU
    switch makes it gloo on CPU)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(WORKER), str(config_path), str(out_dir), *flags]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.fixture(scope="module")
def two_process_runs(tiny_config, tmp_path_factory):
    """An uninterrupted 4-step run, and the same run resumed from its step-2 checkpoint."""
    root = tmp_path_factory.mktemp("ddp")
    # A controller that decides before every update and learns every 2 (L = 1, B = 2): updates before and
    # after the step-2 checkpoint.
    controller = ("method=atesd", "exposure.policy=controller", "exposure.hold_steps=1",
                  "exposure.controller.lookahead=1", "exposure.controller.decisions_per_update=2",
                  "exposure.controller.lr=0.1", "exposure.controller.hidden_sizes=[8]")
    config = tiny_config(root, *controller, "run.name=ddp", f"train.steps={STEPS}", "train.checkpoint_every=2",
                         "train.keep_checkpoints=2", "train.batch_size=4", "train.micro_batch_size=1")
    config_path = root / "config.yaml"
    save_config(config, config_path)
    launch(config_path, root / "full")
    run_dir = Path(config.run.output_dir) / "ddp"

    # The interrupted run: the same directory as it was at step 2 (the checkpoint layout is documented in
    # atesd.train.checkpoint), then resumed.
    resumed_config = config.model_copy(deep=True)
    resumed_config.run.name = "ddp-resumed"
    resumed_dir = Path(config.run.output_dir) / "ddp-resumed"
    shutil.copytree(run_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step-0000004")
    shutil.rmtree(resumed_dir / "final_model")
    (resumed_dir / "checkpoints" / LATEST).write_text("step-0000002")
    save_config(resumed_config, resumed_dir / "config.yaml")
    resumed_path = root / "resumed.yaml"
    save_config(resumed_config, resumed_path)
    launch(resumed_path, root / "resumed", "--resume")
    return root, run_dir, resumed_dir


def ranks(out_dir: Path) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def test_both_processes_use_the_main_process_alpha(two_process_runs):
    root, run_dir, _ = two_process_runs
    seen = ranks(root / "full")
    assert all(rank["world"] == 2 for rank in seen)
    alphas = [step["alpha"] for step in seen[0]["local"]]
    assert [step["alpha"] for step in seen[1]["local"]] == alphas  # its own policy would have said 1.0
    assert seen[1]["asked"] == 0 and seen[0]["asked"] >= STEPS
    assert len(set(alphas)) == STEPS and 1.0 not in alphas  # a new controller decision before every update
    decisions = read_metrics(run_dir / "decisions.jsonl")
    assert [row["alpha"] for row in sorted(decisions, key=lambda row: row["step"])] == alphas
    assert [row["controller_updates"] for row in read_metrics(run_dir / "metrics.jsonl")
            if "controller_updates" in row] == [1, 2]


def test_processes_train_on_different_prompts_into_identical_weights(two_process_runs, tiny_config, tmp_path):
    root, run_dir, _ = two_process_runs
    seen = ranks(root / "full")
    for step in range(STEPS):
        assert seen[0]["local"][step]["prompts"] != seen[1]["local"][step]["prompts"]
    weights = [load_file(str(root / "full" / f"rank{r}.safetensors")) for r in range(2)]
    assert set(weights[0]) == set(weights[1])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    final = load_file(str(run_dir / "final_model" / "model.safetensors"))
    name = next(k for k in final if k in weights[0])
    assert torch.equal(final[name], weights[0][name])


def test_statistics_are_combined_across_processes(two_process_runs):
    root, run_dir, _ = two_process_runs
    seen = ranks(root / "full")
    assert seen[0]["observed"] == seen[1]["observed"]  # the policy sees the same numbers on every process
    logged = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in logged] == list(range(1, STEPS + 1))
    for step, row in enumerate(logged):
        parts = [rank["local"][step] for rank in seen]
        tokens = sum(p["tokens"] for p in parts)
        assert row["kl_mean"] == pytest.approx(sum(p["kl_sum"] for p in parts) / tokens, rel=1e-5)
        assert row["rollout_accuracy"] == pytest.approx(sum(p["correct"] for p in parts) / 4)
        assert row["generated_tokens"] == tokens
        every_kl = torch.tensor([value for p in parts for value in p["kl"]])  # quantiles over all tokens
        assert row["kl_p90"] == pytest.approx(float(torch.quantile(every_kl, 0.9)), rel=1e-5)
        assert row["kl_p99"] == pytest.approx(float(torch.quantile(every_kl, 0.99)), rel=1e-5)
        assert seen[0]["observed"][step]["kl_mean"] == pytest.approx(row["kl_mean"])


def test_grpo_groups_stay_on_their_process_and_the_weights_agree(tiny_config, tmp_path):
    """GRPO under 2 processes: each process samples whole groups for its own prompts (group normalisation is
    local), the policy-gradient loss is normalised over both processes' tokens, and both end with one model."""
    config = tiny_config(tmp_path, "method=grpo", "grpo.group_size=2", "run.name=grpo", "train.steps=2",
                         "train.batch_size=4", "train.micro_batch_size=2")
    config_path = tmp_path / "grpo.yaml"
    save_config(config, config_path)
    launch(config_path, tmp_path / "out", "--grade-by-length")
    seen = ranks(tmp_path / "out")
    for step in range(2):
        prompts = [rank["local"][step]["prompts"] for rank in seen]
        for own in prompts:  # 2 prompts per process, each repeated for its group of 2
            assert len(own) == 4 and own[0] == own[1] and own[2] == own[3]
        assert prompts[0] != prompts[1]
    weights = [load_file(str(tmp_path / "out" / f"rank{r}.safetensors")) for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    rows = read_metrics(Path(config.run.output_dir) / "grpo" / "metrics.jsonl")
    assert min(row["groups_without_signal"] for row in rows) < 1.0 and any(row["grad_norm"] > 0 for row in rows)
    assert [row["rollout_accuracy"] * 8 for row in rows] == \
        [sum(rank["local"][step]["correct"] for rank in seen) for step in range(2)]


def test_resume_from_a_checkpoint_continues_exactly(two_process_runs):
    root, run_dir, resumed_dir = two_process_runs
    full = load_file(str(root / "full" / "rank0.safetensors"))
    for rank in range(2):
        resumed = load_file(str(root / "resumed" / f"rank{rank}.safetensors"))
        assert all(torch.equal(full[k], resumed[k]) for k in full)
    keep = ("loss", "kl_mean", "probe_nll", "teacher_ref_logp", "alpha", "rollout_accuracy", "grad_norm")
    assert [{k: r[k] for k in keep} for r in read_metrics(resumed_dir / "metrics.jsonl")] == \
        [{k: r[k] for k in keep} for r in read_metrics(run_dir / "metrics.jsonl")]


def test_deepspeed_is_refused_with_the_configs_to_use():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from atesd.config import ConfigError
    from atesd.train.distributed import refuse_unsupported_distribution

    def accelerator(kind: str) -> SimpleNamespace:
        return SimpleNamespace(state=SimpleNamespace(distributed_type=DistributedType[kind]))

    with pytest.raises(ConfigError, match="uses DEEPSPEED.*configs/accelerate/ddp.yaml or fsdp.yaml"):
        refuse_unsupported_distribution(accelerator("DEEPSPEED"))
    for supported in ("MULTI_GPU", "FSDP"):  # FSDP: tests/test_fsdp.py
        refuse_unsupported_distribution(accelerator(supported))
