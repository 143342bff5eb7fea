"""The import graph of the packages: no cycles, and the bench outside the product.

Module-level imports only (those in a function run later, when the importer is loaded, and
`if TYPE_CHECKING:` ones never run), read from the source with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("supervisor", "runners", "supervisor_bench")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            checking = ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            found += _top_level_imports(node.orelse if checking else node.body + node.orelse)
        elif isinstance(node, ast.Try):
            found += _top_level_imports(node.body + node.orelse + node.finalbody
                                        + [s for h in node.handlers for s in h.body])
    return found


def _parse(source: str) -> list[ast.stmt]:
    # CPython 3.11 keeps the AST constructor's recursion depth in state shared by every thread
    # (python/cpython#106905): a thread another test left running that compiles code at the same
    # moment makes ast.parse raise a spurious SystemError. Parsing again is then exact.
    for _ in range(3):
        try:
            return ast.parse(source).body
        except SystemError:
            continue
    return ast.parse(source).body


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of PACKAGES it imports when it is loaded."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in _top_level_imports(_parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                edges.add(sub if sub in modules else base)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycles() -> None:
    graph = _graph()
    assert "supervisor.operators.cli.app" in graph and "supervisor_bench.harness" in graph  # it did read the tree
    cycles = [c for c in (_cycle_from(m, graph) for m in sorted(graph)) if c]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_product_does_not_import_the_bench() -> None:
    # Only `job-supervisor bench` loads it, from inside the command (supervisor/operators/cli/bench.py)
    graph = _graph()
    product = {m: edges for m, edges in graph.items() if not m.startswith("supervisor_bench")}
    assert not {m for m, edges in product.items() if any(e.startswith("supervisor_bench") for e in edges)}
