"""The package's import graph: no cycle, and every import runs down the layers, never up.

Layers, from the bottom: the model and its pipeline (``pgemma.*`` modules), then the speed-ups
(``pgemma.fast``), training (``pgemma.train``) and the figures (``pgemma.viz``), each of which may
use the layer below but not one another, and the exercises' checkers (``pgemma.exercises``), which
may also run training, then the command line. The package's ``__init__`` files
only re-export, and are left out of the graph.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import pgemma

SOURCE = Path(pgemma.__file__).parent
# Sub-packages above the core, and what each may import besides the core and itself.
UPPER_LAYERS = {"fast": set(), "train": set(), "viz": set(), "exercises": {"train"}}
ENTRY_POINTS = {"pgemma.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The pgemma modules that ``path`` imports anywhere (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """module -> the pgemma modules it imports; package ``__init__`` files are left out."""
    files = {module_name(path): path for path in SOURCE.rglob("*.py")}
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    modules = set(files) - packages
    return {name: imported_modules(files[name], modules) - {name} for name in sorted(modules)}


def layer_of(module: str) -> str:
    """'core', a sub-package name from UPPER_LAYERS, or 'entry'."""
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in UPPER_LAYERS else "core"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], path[len(path) :] = "open", [node]
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_the_sources():
    graph = import_graph()
    assert "pgemma.gemma" in graph["pgemma.paligemma"]
    assert "pgemma.config" in graph["pgemma.gemma"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_imports_run_down_the_layers(module: str):
    layer = layer_of(module)
    if layer == "entry":
        return
    allowed = {"core"} if layer == "core" else {"core", layer} | UPPER_LAYERS[layer]
    upward = sorted(target for target in import_graph()[module] if layer_of(target) not in allowed)
    assert not upward, f"{module} ({layer}) imports from a higher or sibling layer: {upward}"


def test_the_decoder_knows_nothing_of_the_speed_ups():
    source = (SOURCE / "gemma.py").read_text().lower()
    mentioned = [word for word in ("fast", "fuse", "onednn", "gemv", "compile") if word in source]
    assert not mentioned, f"gemma.py mentions {mentioned}"
