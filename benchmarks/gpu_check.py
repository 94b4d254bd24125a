"""GPU check: a few atesd training steps of a randomly initialised Qwen3-1.7B-architecture model, no download.

The model is built from a `Qwen3Config` written here with Qwen3-1.7B's shapes (28 layers, hidden 2048,
16 query / 8 key-value heads, vocabulary 151,936); the tokenizer is atesd's local character tokenizer (the
model's vocabulary is larger; a random model samples ids the tokenizer decodes to nothing, which is fine
here). Both are saved to a temporary directory and trained through the real `Trainer` with the Qwen3 OPSD
recipe's settings (LoRA r 64 on every projection, bf16 weights, gradient checkpointing, forward KL clipped at
0.05) on generated arithmetic problems. A random model never emits EOS, so every rollout runs to
``--max-new-tokens`` (1,024 by default): the recipe's worst-case shape.

Prints and writes (``--out``, JSON) rollout tokens/s (generated tokens / rollout time), training tokens/s
(completion tokens scored / update time, the update being teacher + student forward and the backward) and
peak GPU memory, per step and as the median of the steps after the first (which includes warm-up).

    python benchmarks/gpu_check.py                     # on a CUDA GPU
    python benchmarks/gpu_check.py --tiny --steps 2    # tiny shapes in float32: a CPU smoke test

``--fsdp`` trains every parameter instead (no LoRA; float32 master weights with bf16 autocast and lr 1e-6, as
configs/qwen3-8b/opsd-full.yaml), sharded with FSDP2 over the launched processes, each reporting its own peak
GPU memory (the main process writes the report):

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 benchmarks/gpu_check.py --fsdp
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
from transformers import Qwen3Config, Qwen3ForCausalLM

from atesd.config import load_config
from atesd.data.arithmetic import ArithmeticSpec, make_splits
from atesd.models.tiny import build_char_tokenizer
from atesd.train.trainer import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen3-1.7b" / "opsd.yaml"

# Qwen3-1.7B's architecture (its published config.json), written out so that nothing is downloaded.
QWEN3_1_7B = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
              "max_position_embeddings": 40960, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True}
# The smoke test's shapes: small enough for a CPU in seconds (float32 there: CPUs are slow at bf16 matmuls).
TINY = {**QWEN3_1_7B, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def build_model_dir(target: Path, shapes: dict, dtype: torch.dtype) -> None:
    """A random Qwen3 model with `shapes` and the character tokenizer, saved as a `from_pretrained` dir."""
    tokenizer = build_char_tokenizer()
    config = Qwen3Config(**shapes, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(dtype)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def write_problems(path: Path, count: int) -> None:
    problems = make_splits(ArithmeticSpec(digits=2, min_ops=3, max_ops=6, operators="+-*"), {"train": count},
                           seed=0)["train"]
    path.write_text("".join(json.dumps({"id": p.id, "problem": p.question, "solution": p.solution}) + "\n"
                            for p in problems))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test); Qwen3-1.7B otherwise")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step (the recipe uses 32)")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="prompts per forward and per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--fsdp", action="store_true", help="full fine-tuning sharded with FSDP2 (launch with "
                        "accelerate launch --config_file configs/accelerate/fsdp.yaml)")
    args = parser.parse_args(argv)
    if args.fsdp and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        parser.error("--fsdp: launch with accelerate launch --config_file configs/accelerate/fsdp.yaml")

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        parser.error("no CUDA GPU: run with --tiny for the CPU smoke test")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        dtype = "float32" if args.tiny else "bfloat16"
        build_model_dir(scratch / "model", TINY if args.tiny else QWEN3_1_7B, getattr(torch, dtype))
        write_problems(scratch / "train.jsonl", 64 + args.batch_size * args.steps)
        lora = "{r: 8, alpha: 16}" if args.tiny else "{r: 64, alpha: 128}"
        adaptation = ["model.dtype=float32", "model.lora=null", "train.bf16_autocast=true", "train.lr=1e-6"] \
            if args.fsdp else [f"model.dtype={dtype}", f"model.lora={lora}", "model.lora.save_merged=false"]
        config = load_config(RECIPE, [
            f"model.name_or_path={scratch / 'model'}",
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
            record = trainer.train_step()
            steps.append({
                "step": record["step"],
                "generated_tokens": record["generated_tokens"],
                "rollout_time_s": record["rollout_time"],
                "update_time_s": record["update_time"],
                "step_time_s": record["step_time"],
                "rollout_tokens_per_s": record["generated_tokens"] / record["rollout_time"],
                "training_tokens_per_s": record["generated_tokens"] / record["update_time"],
                "loss": record["loss"],
            })
            if trainer.processes.is_main:
                print(json.dumps(steps[-1]), flush=True)
        measured = steps[1:] or steps
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "shapes": "tiny" if args.tiny else "Qwen3-1.7B",
            "parameters": sum(p.numel() for p in trainer.unwrapped.parameters()),
            "trainable_parameters": sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad),
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "max_new_tokens": args.max_new_tokens,
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
    summary = {k: report[k] for k in ("device", "shapes", "rollout_tokens_per_s", "training_tokens_per_s",
                                      "peak_gpu_memory_gib", "sharded_processes")}
    print(json.dumps(summary, indent=1))
    return report


def peak_per_process(trainer: Trainer) -> list[float]:
    """Every process's peak GPU memory in GiB (each process has its own GPU)."""
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30])
    return trainer.processes.gathered(peak).tolist()


if __name__ == "__main__":
    main(sys.argv[1:])
