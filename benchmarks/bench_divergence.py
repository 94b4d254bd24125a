"""Peak memory and time of the distillation loss: chunked (atesd) against a direct full-[N, V] version.

Each (variant, N) runs forward + backward of forward-KL with the pointwise clip (the OPSD v3 recipe) plus
the mismatch statistics, in a fresh subprocess, so that one run's memory cannot hide in another's. Peak
memory is what the loss adds on top of its inputs: on CUDA, torch.cuda.max_memory_allocated minus the
allocation after the inputs are made; on CPU, the process's peak resident set (getrusage ru_maxrss) minus
the same figure taken after the inputs are made and touched. The student's gradient [N, V] is counted in
both variants (the caller needs it either way). With --hidden-dim D, two more variants start from hidden
states [N, D] and an LM head [V, D]: chunked `divergence_from_hidden` against `hidden @ head.T` + direct.

    python benchmarks/bench_divergence.py --out runs/bench_divergence.json
    python benchmarks/bench_divergence.py --vocab 4096 --positions 64 256 --out /tmp/small.json

Not a test: nothing is asserted; it prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from atesd.losses import DivergenceSpec, divergence_from_hidden, divergence_from_logits

CLIP = 0.05


def direct_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    """The same loss and statistics written the obvious way, over the whole [N, V] at once."""
    student = student_logits.float().log_softmax(-1)
    teacher = teacher_logits.detach().float().log_softmax(-1)
    loss = (teacher.exp() * (teacher - student)).clamp(max=CLIP).sum()
    with torch.no_grad():
        per_token_kl = (teacher.exp() * (teacher - student)).sum(-1)
        top1_disagree = teacher.argmax(-1) != student.argmax(-1)
        student_token_prob = student.gather(-1, targets[:, None]).exp()
    del per_token_kl, top1_disagree, student_token_prob  # computed for their cost only
    return loss


def warm_up_code_paths(device: str) -> None:
    """Run every code path once on tiny inputs: the first checkpointed call imports modules, and on CPU
    that memory would otherwise count as the loss's peak."""
    student = torch.randn(4, 16, device=device, requires_grad=True)
    head = torch.randn(16, 8, device=device, requires_grad=True)
    targets = torch.zeros(4, dtype=torch.long, device=device)
    divergence_from_logits(student, student, targets, DivergenceSpec(chunk_size=2)).loss_sum.backward()
    hidden = torch.randn(4, 8, device=device, requires_grad=True)
    out = divergence_from_hidden(hidden, hidden, head, head, targets, DivergenceSpec(chunk_size=2))
    out.loss_sum.backward()
    direct_loss(student, student, targets).backward()


def measure(variant: str, positions: int, vocab: int, hidden_dim: int, dtype: torch.dtype, chunk_size: int,
            warmup: int, repeats: int, device: str) -> dict:
    """Runs inside the child process: one variant at one N.

    Inputs are made in their own dtype and scaled in place, so that making them leaves no float32
    temporaries in the peak resident set taken as the baseline.
    """
    torch.manual_seed(0)
    spec = DivergenceSpec(kind="forward_kl", clip=CLIP, chunk_size=chunk_size)
    warm_up_code_paths(device)
    targets = torch.randint(0, vocab, (positions,), device=device)
    if variant.endswith("hidden"):
        student_hidden = torch.randn(positions, hidden_dim, device=device, dtype=dtype, requires_grad=True)
        teacher_hidden = torch.randn(positions, hidden_dim, device=device, dtype=dtype)
        head = torch.randn(vocab, hidden_dim, device=device, dtype=dtype).mul_(hidden_dim ** -0.5)
        head.requires_grad_()
        grads = [student_hidden, head]
        if variant == "chunked_hidden":
            def step():
                out = divergence_from_hidden(student_hidden, teacher_hidden, head, head, targets, spec)
                return out.loss_sum
        else:
            def step():
                with torch.no_grad():
                    teacher_logits = teacher_hidden @ head.T
                return direct_loss(student_hidden @ head.T, teacher_logits, targets)
    else:
        student = torch.randn(positions, vocab, device=device, dtype=dtype).mul_(3).requires_grad_()
        teacher = torch.randn(positions, vocab, device=device, dtype=dtype).mul_(3)
        grads = [student]
        if variant == "chunked":
            def step():
                return divergence_from_logits(student, teacher, targets, spec).loss_sum
        else:
            def step():
                return direct_loss(student, teacher, targets)

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    times, loss_value = [], None
    for i in range(warmup + repeats):  # warm-up rounds first, not timed
        for t in grads:
            t.grad = None
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        loss_value = loss.item()
        del loss
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "N": positions, "V": vocab,
            "hidden_dim": hidden_dim if variant.endswith("hidden") else None,
            "dtype": str(dtype).removeprefix("torch."), "chunk_size": chunk_size, "device": device,
            "threads": torch.get_num_threads(),
            "memory_measure": "cuda.max_memory_allocated" if cuda else "ru_maxrss",
            "peak_extra_mib": (peak - base) / 2**20, "time_s_median": statistics.median(times),
            "time_s_all": times, "loss": loss_value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V (Qwen3: 151,936)")
    parser.add_argument("--positions", type=int, nargs="+", default=[256, 1024, 2048], help="values of N")
    parser.add_argument("--variants", nargs="+", default=["direct", "chunked"],
                        choices=["direct", "chunked", "direct_hidden", "chunked_hidden"])
    parser.add_argument("--hidden-dim", type=int, default=2048, help="D for the *_hidden variants")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the inputs (model logits are usually bf16)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default). On a busy small machine 1 gives "
                             "steadier timings")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one measurement, print JSON
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        variant, positions = args.child.split(":")
        result = measure(variant, int(positions), args.vocab, args.hidden_dim, dtype, args.chunk_size,
                         args.warmup, args.repeats, args.device)
        print(json.dumps(result))
        return

    results = []
    header = f"{'variant':<15} {'N':>6} {'peak extra MiB':>15} {'fwd+bwd s':>10} {'loss':>12}"
    print(f"V={args.vocab} dtype={args.dtype} chunk_size={args.chunk_size} device={args.device} "
          f"threads={args.threads or 'default'}\n{header}")
    for positions in args.positions:
        for variant in args.variants:
            command = [sys.executable, __file__, *sys.argv[1:], "--child", f"{variant}:{positions}"]
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                # Out of memory is a result too: the direct version is expected to fail first.
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"variant": variant, "N": positions, "error": tail})
                print(f"{variant:<15} {positions:>6} failed: {tail}")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{variant:<15} {positions:>6} {result['peak_extra_mib']:>15.1f} "
                  f"{result['time_s_median']:>10.3f} {result['loss']:>12.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "torch": torch.__version__, "results": results},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
