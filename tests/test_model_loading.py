"""Where a model name points, and the one-line errors of a model that cannot be loaded."""

from __future__ import annotations

import pytest

from atesd.config import load_config
from atesd.errors import UserError
from atesd.models.loading import ModelLoadError, load_model_and_tokenizer, resolve_model_path


@pytest.mark.parametrize("name", ["runs/x/final_model", "./model", "/nonexistent/model", "~/nowhere/model"])
def test_a_local_path_that_does_not_exist_is_named_with_its_setting(name):
    with pytest.raises(FileNotFoundError, match=f"--model: '{name}' does not exist"):
        resolve_model_path(name, setting="--model")


def test_hub_ids_pass_through():
    assert resolve_model_path("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    assert resolve_model_path("gpt2") == "gpt2"


def test_a_directory_without_weights_is_a_model_load_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    with pytest.raises(ModelLoadError, match=f"cannot load the model '{tmp_path}'") as excinfo:
        load_model_and_tokenizer(load_config(None), str(tmp_path))
    assert isinstance(excinfo.value, UserError) and "\n" not in str(excinfo.value)
