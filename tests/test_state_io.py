"""Pickle-free state files: optimizer, RNG states and nested structures round-trip exactly."""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atesd.train.state_io import load_state, save_state


def assert_same(loaded, original, path="state"):
    """Equal values and equal types, recursively (tuples stay tuples, int keys stay ints)."""
    assert type(loaded) is type(original), f"{path}: {type(loaded).__name__} != {type(original).__name__}"
    if isinstance(original, torch.Tensor):
        assert loaded.dtype == original.dtype and loaded.shape == original.shape, path
        assert torch.equal(loaded, original), path
    elif isinstance(original, np.ndarray):
        assert loaded.dtype == original.dtype and loaded.shape == original.shape, path
        assert np.array_equal(loaded, original), path
    elif isinstance(original, dict):
        assert list(loaded) == list(original), path
        for key in original:
            assert type(key) is type(next(k for k in loaded if k == key)), f"{path}: key {key!r}"
            assert_same(loaded[key], original[key], f"{path}.{key}")
    elif isinstance(original, (list, tuple)):
        assert len(loaded) == len(original), path
        for index, (a, b) in enumerate(zip(loaded, original)):
            assert_same(a, b, f"{path}.{index}")
    elif isinstance(original, float) and math.isnan(original):
        assert math.isnan(loaded), path
    else:
        assert loaded == original, path


def load_without_pickle(directory, name):
    """`load_state` with every unpickling entry point made to fail: a load that works used no pickle."""

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pickle, "loads", refuse)
        patch.setattr(pickle, "load", refuse)
        patch.setattr(torch, "load", refuse)
        return load_state(directory, name)


def round_trip(state, directory, name="state"):
    save_state(state, directory, name)
    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted([f"{name}.json", f"{name}.safetensors"])
    raw = (directory / f"{name}.json").read_bytes()
    json.loads(raw)  # plain JSON ...
    assert b"\x80\x04" not in raw and b"\x80\x02" not in raw  # ... with no pickle stream inside
    load_file(str(directory / f"{name}.safetensors"))  # and a plain safetensors file
    return load_without_pickle(directory, name)


def adamw_after_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    for _ in range(2):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def test_adamw_state_round_trips(tmp_path):
    model, optimizer = adamw_after_steps()
    original = optimizer.state_dict()
    assert set(original["state"]) == {0, 1, 2, 3}
    loaded = round_trip(original, tmp_path)
    assert_same(loaded, original)
    assert loaded["param_groups"][0]["betas"] == (0.8, 0.95)

    # loading it into a fresh optimizer continues exactly like the original
    clone = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    clone.load_state_dict(model.state_dict())
    clone_optimizer = torch.optim.AdamW(clone.parameters(), lr=1.0)
    clone_optimizer.load_state_dict(loaded)
    x = torch.randn(5, 4)
    for m, opt in ((model, optimizer), (clone, clone_optimizer)):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_rng_states_round_trip(tmp_path):
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    np.random.standard_normal()  # sets has_gauss / cached_gaussian
    original = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    loaded = round_trip(original, tmp_path, "rng")
    assert_same(loaded, original)
    assert loaded["numpy"][1].dtype == np.uint32

    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    random.setstate(loaded["python"])
    np.random.set_state(loaded["numpy"])
    torch.random.set_rng_state(loaded["torch"])
    again = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert again[:3] == expected[:3]
    assert torch.equal(again[3], expected[3])


def test_nested_structures_round_trip(tmp_path):
    original = {
        "tuple": (1, (2.5, "x", (None, True)), [torch.arange(3), (torch.zeros(2, 2, dtype=torch.bfloat16),)]),
        "int_keys": {0: torch.ones(2), 7: {"inner": (3, 4)}, -1: "minus"},
        "mixed_keys": {1: "a", "b": 2},
        "empty": {"dict": {}, "list": [], "tuple": ()},
        "scalars": [0, -3, 1.25, float("inf"), float("nan"), False, None, "text.with.dots"],
        "numpy": {"array": np.arange(6, dtype=np.int64).reshape(2, 3), "int": np.int64(5), "float": np.float32(0.5)},
        "scalar_tensor": torch.tensor(3.0),
    }
    loaded = round_trip(original, tmp_path)
    expected = dict(original)
    expected["numpy"] = {"array": original["numpy"]["array"], "int": 5, "float": 0.5}  # numpy scalars -> python
    assert_same(loaded, expected)


def test_empty_state_round_trips(tmp_path):
    assert round_trip({}, tmp_path) == {}


def test_unsupported_type_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="cannot save set at 'state.bad'"):
        save_state({"bad": {1, 2}}, tmp_path, "state")


def test_dotted_keys_do_not_overwrite_nested_tensors(tmp_path):
    # The tensor of key "a.b" and the tensor at ["a"]["b"] have the same dotted path: both must survive.
    original = {
        "a.b": torch.zeros(2),
        "a": {"b": torch.ones(2), "c": [torch.full((1,), 3.0), torch.full((1,), 4.0)]},
        "a.c.1": torch.full((1,), 5.0),
        "arr": np.arange(3), "arr#1": torch.full((1,), 6.0),
    }
    loaded = round_trip(original, tmp_path)
    assert_same(loaded, original)
