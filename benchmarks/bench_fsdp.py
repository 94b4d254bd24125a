"""Per-process memory of training state under FSDP2 (atesd.train.sharding) against DDP, at 2 processes (CPU, gloo).

A randomly initialised Qwen3-architecture model (untied output head, as Qwen3-8B; float32) takes one AdamW step
on a short batch, laid out as the trainer lays it out: under DDP wrapped by `DistributedDataParallel`, under FSDP2
sharded per decoder layer by `Sharding.shard`. Counted on each process, from the tensors themselves (exact;
a CPU has no allocator statistics): the bytes of its parameters, gradients and optimizer state (the local shards
under FSDP2); and, for rollouts, the parameter bytes held while HF generate runs with every parameter gathered
(`Sharding.gathered`: the shards plus one whole copy; DDP: the parameters). The peak resident memory of each
process (``ru_maxrss``) is reported too: it includes the whole model each process loads before sharding it.

    python benchmarks/bench_fsdp.py                 # 2 processes, ~60M parameters
    python benchmarks/bench_fsdp.py --quick         # tiny shapes, a smoke run

Each layout runs in its own launch of ``torch.distributed.run`` (so that each peak RSS is its own).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from harness import add_common_flags, apply_threads, markdown_table, write_results

SHAPES = {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
          "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64}
QUICK = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
MIB = 2**20


def tensor_bytes(tensors) -> int:
    from atesd.train.distributed import local_part

    return sum(local_part(t).numel() * t.element_size() for t in tensors if t is not None)


def measure(layout: str, shapes: dict) -> dict:
    """One process's figures for one layout (run inside torch.distributed.run)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from atesd.models.sequences import (
        completion_hidden_states,
        output_head,
        pack_sequences,
        token_logprobs_from_hidden,
    )
    from atesd.train.sharding import Sharding, ShardingSettings

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**shapes, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1))
    sharding = Sharding(ShardingSettings()) if layout == "fsdp2" else None
    wrapped = DistributedDataParallel(model) if sharding is None else sharding.shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    generator = torch.Generator().manual_seed(rank)
    prompts = torch.randint(2, shapes["vocab_size"], (2, 8), generator=generator).tolist()
    completions = torch.randint(2, shapes["vocab_size"], (2, 8), generator=generator).tolist()
    batch = pack_sequences(prompts, completions, pad_token_id=0)
    weight, bias = output_head(model)
    loss = -token_logprobs_from_hidden(completion_hidden_states(wrapped, batch), weight, bias, batch.targets).mean()
    loss.backward()
    optimizer.step()
    optimizer_tensors = [value for state in optimizer.state.values() for value in state.values()
                         if isinstance(value, torch.Tensor)]
    figures = {"parameters": tensor_bytes(model.parameters()),
               "gradients": tensor_bytes(p.grad for p in model.parameters()),
               "optimizer": tensor_bytes(optimizer_tensors)}
    figures["training_state"] = figures["parameters"] + figures["gradients"] + figures["optimizer"]
    optimizer.zero_grad(set_to_none=True)

    held = {"parameters": figures["parameters"]}
    gathered = sharding.gathered(model) if sharding is not None else torch.no_grad()
    with gathered, torch.no_grad():
        if sharding is not None:  # the shards stay allocated while the whole copies are in use
            held["parameters"] += tensor_bytes(model.parameters())
        model.generate(input_ids=torch.tensor(prompts), attention_mask=torch.ones(2, 8, dtype=torch.long),
                       do_sample=False, max_new_tokens=2, pad_token_id=0)
    figures["parameters_during_generate"] = held["parameters"]
    figures["whole_model_parameters"] = sum(p.numel() for p in model.parameters())
    figures["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dist.destroy_process_group()
    return figures


def launch(layout: str, args: argparse.Namespace, scratch: Path) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes),
               "--master_port", str(args.port), __file__, "--worker", layout, "--scratch", str(scratch),
               *(["--quick"] if args.quick else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                          os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command, check=True, env=env)
    return [json.loads((scratch / f"{layout}.rank{r}.json").read_text()) for r in range(args.processes)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_flags(parser, repeats=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=29517)
    parser.add_argument("--worker", choices=["ddp", "fsdp2"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    shapes = QUICK if args.quick else SHAPES
    if args.worker:
        figures = measure(args.worker, shapes)
        rank = int(os.environ["RANK"])
        (args.scratch / f"{args.worker}.rank{rank}.json").write_text(json.dumps(figures))
        return figures

    with tempfile.TemporaryDirectory() as scratch:
        results = {layout: launch(layout, args, Path(scratch)) for layout in ("ddp", "fsdp2")}
    rows = []
    for key in ("parameters", "gradients", "optimizer", "training_state", "parameters_during_generate", "max_rss"):
        ddp, fsdp = (max(rank[key] for rank in results[layout]) for layout in ("ddp", "fsdp2"))
        rows.append([key.replace("_", " "), ddp / MIB, fsdp / MIB, fsdp / ddp])
    print(f"{results['ddp'][0]['whole_model_parameters'] / 1e6:.1f}M parameters, float32, "
          f"{args.processes} processes; MiB per process (the largest of the processes)")
    print(markdown_table(["per process", "DDP MiB", "FSDP2 MiB", "FSDP2 / DDP"], rows))
    return write_results(args.out, "fsdp", args, {"shapes": shapes, "processes": args.processes, **results})


if __name__ == "__main__":
    main(sys.argv[1:])
