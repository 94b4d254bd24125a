"""The package's layers import one way (docs/architecture.md), with no circle between modules, and an exposure rule
lives in its own module. Imports inside functions count as much as those at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "atesd"
# Lowest first: a module may import its own layer's modules and those of any lower layer.
LAYERS = {"errors": 0, "files": 0, "settings": 0, "packaged": 0, "data": 1, "exposure": 2, "config": 3, "losses": 4,
          "models": 4, "rollout": 5, "eval": 6, "train": 7, "experiments": 8, "cli": 9}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atesd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("atesd"))
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {target for target in imports_of(path) if target in MODULES and target != name}
         for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    if layer(module) is None:
        return  # the package's own __init__
    upward = [target for target in GRAPH[module]
              if layer(target) is not None and LAYERS[layer(target)] > LAYERS[layer(module)]]
    assert not upward, f"{module} imports {upward} from a higher layer"


def test_no_module_imports_itself_through_a_circle():
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                raise AssertionError(" -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_every_layer_is_known():
    assert {layer(m) for m in MODULES} - {None} <= set(LAYERS)


def test_each_exposure_rules_name_is_in_its_own_module_and_one_registry_line():
    """docs/architecture.md#adding-an-exposure-rule: a rule per problem is one module and one import line."""
    from atesd.exposure import REGISTRY
    from atesd.exposure.rules import ProblemRule

    rules = [name for name, settings in REGISTRY.items() if isinstance(settings().build(1, 0), ProblemRule)]
    assert {"adaback", "seele", "paint", "confidence_gate"} <= set(rules)
    for name in rules:
        found = {module: sum(name in line.lower() for line in path.read_text().splitlines())
                 for module, path in MODULES.items() if name in path.read_text().lower()}
        assert set(found) == {f"atesd.exposure.{name}", "atesd.exposure"} and found["atesd.exposure"] == 1, found
