"""Saving nested training state without pickle: tensors to safetensors, everything else to JSON.

Optimizer, scheduler, RNG and policy states are nested dicts/lists/tuples of numbers, strings and tensors.
`save_state` splits such a tree into a ``.safetensors`` file (the tensors, by their path in the tree) and a
``.json`` file (the structure, with a reference where each tensor was). Loading never unpickles anything,
so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from atesd.files import write_durably


def _unique_key(path: str, tensors: dict[str, torch.Tensor]) -> str:
    # Paths can collide when keys contain dots ({"a.b": x, "a": {"b": y}}): never overwrite a tensor.
    key, suffix = path, 1
    while key in tensors:
        key, suffix = f"{path}#{suffix}", suffix + 1
    return key


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = _unique_key(path, tensors)
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = _unique_key(path, tensors)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {"__dict__": {key: _encode(item, f"{path}.{key}", tensors) for key, item in value.items()}}
        return {"__items__": [[key, _encode(item, f"{path}.{index}", tensors)]
                              for index, (key, item) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, f"{path}.{i}", tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{path}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {type(value).__name__} at '{path}'")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__tuple__" in value:
        return tuple(_decode(item, tensors) for item in value["__tuple__"])
    if "__items__" in value:
        return {key: _decode(item, tensors) for key, item in value["__items__"]}
    return {key: _decode(item, tensors) for key, item in value["__dict__"].items()}


def save_state(state: Any, directory: str | Path, name: str) -> None:
    """Write `state` as ``name.json`` + ``name.safetensors`` in `directory`."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, name, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    write_durably(directory / f"{name}.json", json.dumps(structure))


def load_state(directory: str | Path, name: str) -> Any:
    directory = Path(directory)
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return _decode(json.loads((directory / f"{name}.json").read_text()), tensors)
