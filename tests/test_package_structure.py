"""The package's import graph: no import circle, and no module importing another module's `_private` name."""

import ast
from pathlib import Path

import mask2former_dinov3


PACKAGE = Path(mask2former_dinov3.__file__).parent


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Module name -> [(imported package module, names imported from it)], for every relative import, at any depth
    (a function-level import is still an edge of the graph)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        edges = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges.append((node.module.split(".")[0], [alias.name for alias in node.names]))
                else:  # from . import synthetic
                    edges += [(alias.name, []) for alias in node.names]
        graph[path.stem] = edges
    return graph


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in graph.get(node, ()):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_package_has_no_import_circle():
    graph = {module: [target for target, _ in edges if target != "__init__"] for module, edges in _imports().items()}
    assert set(graph) >= {"finetune", "training", "data", "metrics", "predict", "tiling", "loading", "convert"}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_no_module_imports_another_modules_private_name():
    offenders = [
        f"{module} imports {name} from {target}"
        for module, edges in _imports().items()
        for target, names in edges
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offenders, "; ".join(offenders)
