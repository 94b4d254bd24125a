"""The GPU check's agreement part: the distillation loss and its gradients on CUDA equal those on the CPU.

The embedded model's architecture (configs/embedded/opsd.yaml's sizes, randomly initialised: its warm start
would cost minutes) is set up twice through the real `Trainer`, once on the CPU and once on the default device
(the GPU), each in a process of its own. Each scores the same fixed completions (the problems' reference
solutions, so that no sampling differs) with the teacher at two exposures, takes the step's loss
(forward KL, summed over tokens and divided by their number, as in a training step) and its gradient with
respect to every parameter, and g_t and the probe NLL. The parent compares them in float32:

- loss, g_t, probe NLL: relative difference;
- gradients: ||g_cuda − g_cpu|| / ||g_cpu|| over all parameters together, and the worst single tensor's.

    python benchmarks/gpu/agreement.py --out agreement.json            # on a CUDA GPU
    python benchmarks/gpu/agreement.py --tiny --out agreement.json     # CPU against CPU: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from atesd.config import load_config
from atesd.data.arithmetic import embedded_splits
from atesd.models.tiny import build_char_tokenizer, build_tiny_model

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "embedded" / "opsd.yaml"
ALPHAS = (0.5, 1.0)
TOLERANCE = 1e-4  # relative, float32: kernels differ between devices, the mathematics must not


def build_embedded_model(target: Path) -> None:
    """The embedded architecture, randomly initialised, as a ``from_pretrained`` directory."""
    settings = load_config(RECIPE).model.embedded
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=settings.hidden_size, num_layers=settings.num_layers,
                             num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
                             intermediate_size=settings.intermediate_size, max_positions=settings.max_positions,
                             seed=0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def one_side(model_dir: Path, out: Path, scratch: Path) -> None:
    """Loss, g_t, probe NLL and gradients at every exposure in `ALPHAS` on this process's device, to `out`."""
    from atesd.train.forwards import StepCost
    from atesd.train.recipe import Trainer

    config = load_config(RECIPE, [f"model.name_or_path={model_dir}", f"run.output_dir={scratch}",
                                  "train.micro_batch_size=16", "data.probe_size=16"])
    trainer = Trainer(config)
    try:
        problems = embedded_splits(config.data.task, config.data.probe_size)["train"][:16]
        prompts, cost = trainer.prompts, StepCost()
        student = [prompts.student(p) for p in problems]
        completions = [prompts.solution(p) for p in problems]
        tensors = {"probe_nll": torch.tensor(trainer.probe_nll())}
        for alpha in ALPHAS:
            teacher = trainer.teacher.targets(problems, [alpha] * len(problems), completions, True, cost)
            out_ = trainer.step_loss(student, completions, teacher, 0, cost)
            num_tokens = sum(len(ids) for ids in completions)
            trainer.model.zero_grad(set_to_none=True)
            loss = out_.loss_sum / num_tokens
            loss.backward()
            tensors[f"{alpha}/loss"] = loss.detach().cpu()
            tensors[f"{alpha}/g_t"] = torch.tensor(teacher.reference_logp)
            for name, parameter in trainer.unwrapped.named_parameters():
                if parameter.grad is not None:
                    tensors[f"{alpha}/grad/{name}"] = parameter.grad.detach().float().cpu()
        tensors["device"] = torch.tensor([trainer.processes.device.type == "cuda"])
        save_file(tensors, str(out))
    finally:
        trainer.release()


def compare(cpu: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict:
    """Relative differences of the scalars and the gradients, per exposure, and whether all are within tolerance."""
    report: dict = {"tolerance": TOLERANCE, "probe_nll_rel_diff": relative(cpu["probe_nll"], other["probe_nll"])}
    for alpha in ALPHAS:
        names = sorted(key for key in cpu if key.startswith(f"{alpha}/grad/"))
        reference = torch.cat([cpu[name].flatten() for name in names])
        difference = torch.cat([(other[name] - cpu[name]).flatten() for name in names])
        report[str(alpha)] = {
            "loss_cpu": float(cpu[f"{alpha}/loss"]), "loss_other": float(other[f"{alpha}/loss"]),
            "loss_rel_diff": relative(cpu[f"{alpha}/loss"], other[f"{alpha}/loss"]),
            "g_t_rel_diff": relative(cpu[f"{alpha}/g_t"], other[f"{alpha}/g_t"]),
            "grad_rel_diff": float(difference.norm() / reference.norm()),
            "worst_tensor_grad_rel_diff": max(relative(cpu[name], other[name]) for name in names),
            "gradient_tensors": len(names),
        }
    worst = max([report["probe_nll_rel_diff"]] + [report[str(a)][key] for a in ALPHAS for key in
                                                  ("loss_rel_diff", "g_t_rel_diff", "grad_rel_diff")])
    report["worst_rel_diff"] = worst
    report["agree"] = worst <= TOLERANCE
    return report


def relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((other - reference).norm() / reference.norm().clamp_min(1e-30))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="no GPU needed: the CPU against itself (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("gpu_agreement.json"))
    parser.add_argument("--side", type=Path, nargs=3, metavar=("MODEL_DIR", "OUT", "SCRATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        one_side(*args.side)
        return {}
    if not torch.cuda.is_available() and not args.tiny:
        parser.error("no CUDA GPU: run with --tiny for the CPU smoke test")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        build_embedded_model(scratch / "model")
        sides = {}
        for side, environment in (("cpu", {"ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}),
                                  ("default", {})):
            out = scratch / f"{side}.safetensors"
            subprocess.run([sys.executable, __file__, "--side", str(scratch / "model"), str(out),
                            str(scratch / f"runs-{side}")], check=True, env={**os.environ, **environment})
            sides[side] = load_file(str(out))
        report = {"model": "embedded architecture, random weights", "float": "float32",
                  "other_device": "cuda" if bool(sides["default"]["device"]) else "cpu",
                  **compare(sides["cpu"], sides["default"])}
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
