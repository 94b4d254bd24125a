"""The GPU check's training part: a few atesd steps of a randomly initialised Qwen3-1.7B-shaped model.

The model (`shapes.build_model_dir`, or ``--model-dir``) is trained through the real `Trainer` with the Qwen3
OPSD recipe's settings (LoRA r 64 on every projection, bf16 weights, gradient checkpointing, forward KL clipped at
0.05) on generated arithmetic problems. A random model never emits EOS, so every rollout runs to
``--max-new-tokens`` (1,024 by default): the recipe's worst-case shape.

Writes (``--out``, JSON) per step and as the median of the steps after the first (which includes warm-up):
every part of the step in seconds (rollout, teacher, update = student forward + backward + optimizer, probe,
exposure), rollout tokens/s (generated tokens / rollout time), training tokens/s (completion tokens / the
teacher's and the update's time) and peak GPU memory.

    python benchmarks/gpu/train_step.py                     # on a CUDA GPU
    python benchmarks/gpu/train_step.py --tiny --steps 2    # tiny shapes in float32: a CPU smoke test

``--fsdp`` trains every parameter instead (no LoRA; float32 master weights with bf16 autocast and lr 1e-6, as
configs/qwen3-8b/opsd-full.yaml), sharded with FSDP2 over the launched processes (one GPU is enough), each
reporting its own peak GPU memory (the main process writes the report):

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 benchmarks/gpu/train_step.py --fsdp
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import add_shape_flags, build_model_dir, device_shapes, write_problems

from atesd.config import load_config
from atesd.train.recipe import Trainer

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "qwen3-1.7b" / "opsd.yaml"
PARTS = ("rollout", "teacher", "update", "probe", "exposure")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_flags(parser)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step (the recipe uses 32)")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="prompts per forward and per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("gpu_train_step.json"))
    parser.add_argument("--fsdp", action="store_true", help="full fine-tuning sharded with FSDP2 (launch with "
                        "accelerate launch --config_file configs/accelerate/fsdp.yaml)")
    args = parser.parse_args(argv)
    if args.fsdp and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        parser.error("--fsdp: launch with accelerate launch --config_file configs/accelerate/fsdp.yaml")

    cuda, label, shapes, dtype = device_shapes(parser, args)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = args.model_dir or build_model_dir(scratch / "model", shapes, dtype)
        write_problems(scratch / "train.jsonl", 64 + args.batch_size * args.steps)
        lora = "{r: 8, alpha: 16}" if args.tiny else "{r: 64, alpha: 128}"
        adaptation = ["model.dtype=float32", "model.lora=null", "train.bf16_autocast=true", "train.lr=1e-6"] \
            if args.fsdp else [f"model.dtype={dtype}", f"model.lora={lora}", "model.lora.save_merged=false"]
        config = load_config(RECIPE, [
            f"model.name_or_path={model_dir}",
            *adaptation,
            f"data.train={scratch / 'train.jsonl'}",
            "data.probe_size=8",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.engine=hf",
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"train.micro_batch_size={args.micro_batch_size}",
            f"run.output_dir={scratch / 'runs'}",
        ])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(config)
        started = time.perf_counter()
        steps = []
        trainer.last_probe_nll = trainer.probe_nll()
        for _ in range(args.steps):
            steps.append(step_row(trainer.train_step()))
            if trainer.processes.is_main:
                print(json.dumps(steps[-1]), flush=True)
        trainer.release()
        measured = steps[1:] or steps
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "shapes": label,
            "training": "full, FSDP2" if args.fsdp else "LoRA",
            "parameters": sum(p.numel() for p in trainer.unwrapped.parameters()),
            "trainable_parameters": sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad),
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "max_new_tokens": args.max_new_tokens,
            "median_seconds": {part: statistics.median(s[f"{part}_time_s"] for s in measured) for part in
                               (*PARTS, "step")},
            "rollout_tokens_per_s": statistics.median(s["rollout_tokens_per_s"] for s in measured),
            "training_tokens_per_s": statistics.median(s["training_tokens_per_s"] for s in measured),
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "sharded_processes": trainer.processes.count if trainer.sharding is not None else None,
            "peak_gpu_memory_gib_per_process": peak_per_process(trainer) if cuda else None,
            "wall_time_s": time.perf_counter() - started,
            "steps": steps,
        }
    if not trainer.processes.is_main:
        return report
    args.out.write_text(json.dumps(report, indent=1))
    summary = {k: report[k] for k in ("device", "shapes", "training", "median_seconds", "rollout_tokens_per_s",
                                      "training_tokens_per_s", "peak_gpu_memory_gib", "sharded_processes")}
    print(json.dumps(summary, indent=1))
    return report


def step_row(record: dict) -> dict:
    """A step's seconds per part and its throughputs; training = the teacher's forwards and the update."""
    tokens = record["generated_tokens"]
    return {"step": record["step"], "generated_tokens": tokens, "loss": record["loss"],
            **{f"{part}_time_s": record[f"{part}_time"] for part in (*PARTS, "step")},
            "rollout_tokens_per_s": tokens / record["rollout_time"],
            "training_tokens_per_s": tokens / (record["teacher_time"] + record["update_time"])}


def peak_per_process(trainer: Trainer) -> list[float]:
    """Every process's peak GPU memory in GiB (each process has its own GPU)."""
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30])
    return trainer.processes.gathered(peak).tolist()


if __name__ == "__main__":
    main(sys.argv[1:])
