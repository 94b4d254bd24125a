#!/usr/bin/env bash
# Every benchmark's smoke run (`make bench-smoke`, which CI runs): each script here with --quick, at the test suite's
# tiny sizes (harness.py), so that a benchmark that no longer runs is found the day it breaks. Nothing is timed
# against a bound: a benchmark passes when it runs to the end.
#   bash benchmarks/smoke.sh PYTHON VLLM_PYTHON
# PYTHON: the main environment's interpreter, with the bench extra (trl); VLLM_PYTHON: the vLLM environment's
# (`make test-vllm` builds it). Every benchmark runs, one after the other, with one thread; each one's output goes to
# a scratch folder (its log and JSON), removed when all passed and kept, with its name printed, when one failed, which
# makes the exit status 1. ATESD_CACHE: the models' cache (default: in the scratch folder, so the tiny models are built
# afresh and SmolLM2 converted from the package's GGUF file); ATESD_BENCHMARK_DIR: the AIME/HMMT answer files
# bench_grading.py reads. The GPU check's parts (benchmarks/gpu) are not here: tests/test_gpu_check.py runs them at
# tiny shapes on the CPU in `make test`.
set -uo pipefail
if [ $# -ne 2 ]; then
    echo "usage: bash benchmarks/smoke.sh PYTHON VLLM_PYTHON" >&2
    exit 2
fi
python=$1
vllm_python=$2
cd "$(dirname "$0")/.."
out=$(mktemp -d "${TMPDIR:-/tmp}/atesd-bench-smoke.XXXXXX")
export ATESD_CACHE=${ATESD_CACHE:-$out/cache} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
failed=()

# smoke NAME COMMAND...: run COMMAND, its output in $out/NAME.log; a failure prints the log's end.
smoke() {
    local name=$1 started=$SECONDS
    shift
    if "$@" >"$out/$name.log" 2>&1; then
        echo "ok      $name ($((SECONDS - started)) s)"
    else
        echo "FAILED  $name ($((SECONDS - started)) s), the end of its log:"
        tail -n 30 "$out/$name.log" | sed 's/^/    /'
        failed+=("$name")
    fi
}

started=$SECONDS
echo "bench-smoke: every benchmark with --quick; logs and results in $out"
# run_all.py's parts: divergence (twice), step, rollout, grading, prompts, scoring, trl
smoke run_all "$python" benchmarks/run_all.py --quick --threads 1 --out "$out/run_all.json"
smoke fsdp "$python" benchmarks/bench_fsdp.py --quick --threads 1 --out "$out/fsdp.json"
smoke exposure "$python" benchmarks/bench_exposure.py --quick --threads 1 --out "$out/exposure.json"
smoke testbed_signal "$python" benchmarks/testbed_signal.py --quick --out "$out/testbed_signal.json"
smoke ar_opd_targets "$python" benchmarks/ar_opd_targets.py --quick --out "$out/ar_opd_targets.json"
# signal_power.py reads committed diagnoses: the table it makes must be the committed one
smoke signal_power "$python" benchmarks/signal_power.py --out "$out/power.csv"
smoke signal_power_committed cmp "$out/power.csv" results/signals/power.csv
# this tree against itself: two runs of the same commands compute the same, bit for bit
smoke same_computation_a "$python" benchmarks/same_computation.py run --quick --threads 1 --source . --out "$out/same/a"
smoke same_computation_b "$python" benchmarks/same_computation.py run --quick --threads 1 --source . --out "$out/same/b"
smoke same_computation "$python" benchmarks/same_computation.py compare "$out/same/a" "$out/same/b"
# vLLM's CPU build, in its own environment; the embedded config with a LoRA adapter covers vLLM's adapter paths
lora="model.lora={r: 8, alpha: 16}"
smoke vllm_rollout "$vllm_python" benchmarks/bench_vllm_rollout.py configs/embedded/opsd.yaml "$lora" --quick \
    --threads 1 --out "$out/vllm_rollout.json"
smoke vllm_sync "$vllm_python" benchmarks/bench_vllm_sync.py configs/embedded/opsd.yaml "$lora" --quick --threads 1 \
    --out "$out/vllm_sync.json"
smoke vllm_eval_agreement "$vllm_python" benchmarks/vllm_eval_agreement.py configs/embedded/opsd.yaml --quick \
    --threads 1 --out "$out/vllm_eval_agreement.json"
smoke smollm2_competence "$vllm_python" benchmarks/smollm2_competence.py --quick --threads 1 \
    --out "$out/smollm2_competence.json"

if [ ${#failed[@]} -gt 0 ]; then
    echo "bench-smoke: ${#failed[@]} failed (${failed[*]}) in $((SECONDS - started)) s; logs in $out" >&2
    exit 1
fi
echo "bench-smoke: all passed in $((SECONDS - started)) s"
rm -rf "$out"
