"""Peak memory and time of the distillation loss: chunked (atesd) against a direct full-[N, V] version.

Each (variant, N) runs forward + backward of forward-KL with the pointwise clip (the OPSD v3 recipe) plus
the mismatch statistics, in a fresh subprocess, so that one run's memory cannot hide in another's. Peak
memory is what the loss adds on top of its inputs: on CUDA, torch.cuda.max_memory_allocated minus the
allocation after the inputs are made; on CPU, the process's peak resident set (getrusage ru_maxrss) minus
the same figure taken after the inputs are made and touched. The student's gradient [N, V] is counted in
both variants (the caller needs it either way). With --hidden-dim D, two more variants start from hidden
states [N, D] and an LM head [V, D]: chunked `divergence_from_hidden` against `hidden @ head.T` + direct.

Then a check of the two at N = ``--check-positions`` with float32 inputs: the loss's relative difference and
the largest absolute difference of the student-logit gradients (the issue asks for both within 1e-5), and the
verdict on memory: chunked peak extra memory over direct's at the largest N where both ran (target <= 1/4).

    python benchmarks/bench_divergence.py --out runs/bench/divergence.json
    python benchmarks/bench_divergence.py --vocab 4096 --positions 64 256 --out /tmp/small.json

``--quick`` (a smoke run) measures N = 1,024 at V = 32,768, one timed round, and checks agreement at N = 256.

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

import torch
from harness import add_common_flags, apply_threads, machine

from atesd.config import LossConfig
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


def agreement(positions: int, vocab: int, chunk_size: int, device: str) -> dict:
    """Runs inside the child process: chunked against direct on the same float32 inputs, values and gradients."""
    torch.manual_seed(0)
    spec = DivergenceSpec(kind="forward_kl", clip=CLIP, chunk_size=chunk_size)
    student = torch.randn(positions, vocab, device=device).mul_(3).requires_grad_()
    teacher = torch.randn(positions, vocab, device=device).mul_(3)
    targets = torch.randint(0, vocab, (positions,), device=device)
    chunked_loss = divergence_from_logits(student, teacher, targets, spec).loss_sum
    chunked_loss.backward()
    chunked_grad, student.grad = student.grad, None
    direct = direct_loss(student, teacher, targets)
    direct.backward()
    return {"N": positions, "V": vocab, "dtype": "float32", "loss_chunked": chunked_loss.item(),
            "loss_direct": direct.item(),
            "loss_rel_diff": abs(chunked_loss.item() - direct.item()) / abs(direct.item()),
            "grad_max_abs_diff": (chunked_grad - student.grad).abs().max().item(),
            "grad_max_abs": student.grad.abs().max().item()}


def run_child(argv: list[str], child: str) -> dict:
    """One measurement in a fresh process, so that one run's memory cannot hide in another's peak."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", child], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        # Out of memory is a result too: the direct version is expected to fail first.
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(results: list[dict], agree: dict) -> dict:
    """The issue's targets: chunked peak extra <= 1/4 of direct's, values and gradients within 1e-5."""
    peaks = {(r["variant"], r["N"]): r["peak_extra_mib"] for r in results if "error" not in r}
    out: dict = {"tolerance": 1e-5}
    for suffix in ("", "_hidden"):  # logits in, and hidden states + head in (what the trainer calls)
        both = sorted(n for variant, n in peaks if variant == f"direct{suffix}" and (f"chunked{suffix}", n) in peaks)
        if both:
            n = both[-1]
            ratio = peaks[f"chunked{suffix}", n] / peaks[f"direct{suffix}", n]
            out[f"memory{suffix}"] = {"N": n, "ratio": ratio, "ok": ratio <= 0.25}
    if "error" not in agree:
        out["values_ok"] = agree["loss_rel_diff"] <= 1e-5
        out["gradients_ok"] = agree["grad_max_abs_diff"] <= 1e-5
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V (Qwen3: 151,936)")
    parser.add_argument("--positions", type=int, nargs="+", default=[256, 1024, 2048], help="values of N")
    parser.add_argument("--variants", nargs="+", default=["direct", "chunked"],
                        choices=["direct", "chunked", "direct_hidden", "chunked_hidden"])
    parser.add_argument("--hidden-dim", type=int, default=2048, help="D for the *_hidden variants")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the inputs (model logits are usually bf16)")
    parser.add_argument("--chunk-size", type=int, default=LossConfig.model_fields["chunk_size"].default,
                        help="positions per chunk (default: loss.chunk_size's default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--check-positions", type=int, default=2048,
                        help="N of the float32 agreement check (0: no check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_common_flags(parser, repeats=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one measurement, print JSON
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    apply_threads(args.threads)

    if args.child:
        variant, positions = args.child.split(":")
        if variant == "agree":
            result = agreement(int(positions), args.vocab, args.chunk_size, args.device)
        else:
            result = measure(variant, int(positions), args.vocab, args.hidden_dim, dtype, args.chunk_size,
                             args.warmup, args.repeats, args.device)
        print(json.dumps(result))
        return
    if args.quick:  # a smoke run: a smaller vocabulary; one N, four chunks of the default 256; a narrower hidden state
        args.vocab, args.positions = min(args.vocab, 32_768), [1024]
        args.check_positions, args.hidden_dim = min(args.check_positions, 256), min(args.hidden_dim, 512)
        args.warmup, args.repeats = 0, 1

    results = []
    header = f"{'variant':<15} {'N':>6} {'peak extra MiB':>15} {'fwd+bwd s':>10} {'loss':>12}"
    print(f"V={args.vocab} dtype={args.dtype} chunk_size={args.chunk_size} device={args.device} "
          f"threads={args.threads or 'default'}\n{header}")
    # The children get the parsed sizes (--quick already applied), not --quick itself.
    child_argv = [arg for arg in sys.argv[1:] if arg != "--quick"] + [
        "--vocab", str(args.vocab), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--hidden-dim", str(args.hidden_dim)]
    for positions in args.positions:
        for variant in args.variants:
            result = {"variant": variant, "N": positions, **run_child(child_argv, f"{variant}:{positions}")}
            results.append(result)
            if "error" in result:
                print(f"{variant:<15} {positions:>6} failed: {result['error']}")
                continue
            print(f"{variant:<15} {positions:>6} {result['peak_extra_mib']:>15.1f} "
                  f"{result['time_s_median']:>10.3f} {result['loss']:>12.4f}", flush=True)
    agree = run_child(child_argv, f"agree:{args.check_positions}") if args.check_positions else {"error": "skipped"}
    summary = verdict(results, agree)
    if "error" in agree:
        print(f"agreement check: {agree['error']}")
    else:
        print(f"agreement at N={agree['N']} (float32): loss rel diff {agree['loss_rel_diff']:.2e}, "
              f"gradient max abs diff {agree['grad_max_abs_diff']:.2e} (largest |grad| {agree['grad_max_abs']:.2e})")
    for key in ("memory", "memory_hidden"):
        if key in summary:
            memory = summary[key]
            print(f"chunked{key[6:]} / direct{key[6:]} peak extra memory at N={memory['N']}: {memory['ratio']:.3f} "
                  f"(target <= 0.25: {'met' if memory['ok'] else 'NOT met'})")
    document = {"benchmark": "divergence", "machine": machine(), "flags": vars(args) | {"out": str(args.out)},
                "results": results, "agreement": agree, "verdict": summary}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
