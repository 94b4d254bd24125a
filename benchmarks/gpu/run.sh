#!/usr/bin/env bash
# The GPU check in one command (docs/scaling.md#the-gpu-check):
#   bash benchmarks/gpu/run.sh OUT_DIR            on a CUDA machine (at most 8 minutes)
#   bash benchmarks/gpu/run.sh OUT_DIR --tiny     the same on a CPU at tiny shapes (CI's smoke test)
# It keeps the machine's own torch (and transformers, accelerate, peft) and installs atesd and what the
# machine lacks from the wheels in benchmarks/gpu/wheels (made by `make gpu-wheels` on a machine with pip
# access) into a scratch folder, without the network. PYTHON chooses the interpreter (python3 by default);
# ATESD_GPU_WHEELS another wheel folder; ATESD_GPU_SITE the install folder (a new temporary one by default).
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUT_DIR [--tiny] [--budget-s S] [--parts P ...]" >&2
    exit 2
fi
out=$1
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
wheels=${ATESD_GPU_WHEELS:-$root/benchmarks/gpu/wheels}
site=${ATESD_GPU_SITE:-$(mktemp -d)/site}

if ! "$python" -c "import torch" 2>/dev/null; then
    echo "run.sh: error: $python cannot import torch: install the machine's torch build first" >&2
    exit 2
fi
if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "run.sh: error: no wheels in $wheels: run 'make gpu-wheels' where pip reaches PyPI, then carry the folder" >&2
    exit 2
fi
# An atesd wheel built from other sources would check other code than this tree's.
"$python" "$root/benchmarks/gpu/wheels.py" --check --dest "$wheels" || exit 2
started=$(date +%s)
"$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
echo "installed $(ls "$wheels"/*.whl | wc -l) wheels into $site in $(( $(date +%s) - started )) s"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
exec "$python" "$root/benchmarks/gpu/check.py" --out "$out" "$@"
