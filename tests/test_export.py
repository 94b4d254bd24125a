"""The final model directory is published whole: a save that dies midway leaves the previous one intact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from atesd.models.export import save_final_model
from atesd.models.tiny import build_char_tokenizer, build_tiny_model


def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=16, max_positions=32, seed=0)


def test_a_save_that_dies_midway_leaves_the_previous_final_model_whole(tmp_path, monkeypatch):
    tokenizer = build_char_tokenizer()
    model = tiny_model(tokenizer)
    save_final_model(model, tokenizer, tmp_path, save_merged=False)
    first = load_file(str(tmp_path / "final_model" / "model.safetensors"))

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the tokenizer is being written

    monkeypatch.setattr(tokenizer, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        save_final_model(model, tokenizer, tmp_path, save_merged=False)
    kept = load_file(str(tmp_path / "final_model" / "model.safetensors"))
    assert all(torch.equal(first[name], kept[name]) for name in first)
    assert (tmp_path / "final_model" / "tokenizer.json").is_file()

    monkeypatch.undo()
    save_final_model(model, tokenizer, tmp_path, save_merged=False)  # the next save replaces it, strays cleaned
    replaced = load_file(str(tmp_path / "final_model" / "model.safetensors"))
    assert not any(torch.equal(first[name], replaced[name]) for name in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_model"]
