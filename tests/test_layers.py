"""The packages' floors run one way: encoder -> indexer -> webapp -> scripts. No module imports a
package above its own (not even inside a function), nothing imports `benchmarks` or `tests`, and
the module-level imports inside the packages form no cycle."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["encoder", "indexer", "webapp", "scripts"]


def imports(root: Path, path: Path, top_level_only: bool) -> list[str]:
    """The absolute module names `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = []
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1])
            # `from . import x` imports the module x of the package
            found += ([f"{base}.{node.module}"] if node.module
                      else [f"{base}.{a.name}" for a in node.names])
    return found


def upward_imports(root: Path, floor: str) -> list[str]:
    above = set(FLOORS[FLOORS.index(floor) + 1:]) | {"benchmarks", "tests"}
    return [f"{path.relative_to(root)} imports {name}"
            for path in sorted((root / floor).rglob("*.py"))
            for name in imports(root, path, top_level_only=False)
            if name.split(".")[0] in above]


def import_cycle(root: Path) -> Optional[list[str]]:
    """A cycle of module-level imports among the packages' modules, or None."""
    known = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for floor in FLOORS if (root / floor).is_dir() for p in (root / floor).rglob("*.py")}
    graph = {name: sorted({m for m in imports(root, path, True) if m in known and m != name})
             for name, path in known.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> Optional[list[str]]:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


@pytest.mark.parametrize("floor", FLOORS)
def test_no_import_goes_up_a_floor(floor):
    assert upward_imports(ROOT, floor) == []


def test_module_level_imports_have_no_cycle():
    assert import_cycle(ROOT) is None


def test_the_checks_catch_a_wrong_import_and_a_cycle(tmp_path):
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "a.py").write_text("from . import b\n\ndef f():\n    import webapp\n")
    (tmp_path / "encoder" / "b.py").write_text("from .a import f\n")
    assert upward_imports(tmp_path, "encoder") == ["encoder/a.py imports webapp"]
    assert import_cycle(tmp_path) == ["encoder.a", "encoder.b", "encoder.a"]
