"""The library's structure: no import cycles between videodit's modules (function-local imports
count: they are cycles that happen later), and the inference path never imports the trainers."""

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "videodit"
INFERENCE = ("videodit.pipeline", "videodit.vae", "videodit.reconstruct", "videodit.generate",
             "videodit.prompting", "videodit.bundle", "videodit.sample", "videodit.eval")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The videodit modules ``path`` imports anywhere in it (imports under TYPE_CHECKING aside):
    ``from a.b import c`` counts as a.b.c when that is a module, else as a.b."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


@functools.cache
def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, modules, root) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_top_level_local_and_relative_imports(tmp_path):
    package = tmp_path / "videodit"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from videodit import b\n")
    (package / "b.py").write_text("def f():\n    from videodit.sub.c import g\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import x\nfrom typing import TYPE_CHECKING\n"
                                          "if TYPE_CHECKING:\n    import videodit.b\n")
    graph = import_graph(package)
    assert graph["videodit.a"] == {"videodit.b"} and graph["videodit.b"] == {"videodit.sub.c"}
    assert graph["videodit.sub.c"] == {"videodit.a"}  # relative; the TYPE_CHECKING import is not counted
    assert find_cycle(graph) == ["videodit.a", "videodit.b", "videodit.sub.c", "videodit.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_videodit_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", INFERENCE)
def test_the_inference_path_does_not_import_the_trainers(module):
    graph = import_graph()
    seen, todo = set(), [m for m in graph if m == module or m.startswith(module + ".")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not sorted(m for m in seen if m.startswith("videodit.train")), f"{module} reaches the trainers"
