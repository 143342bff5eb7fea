"""Issue 16's size limits: modules of supervisor/ and runners/ over 600 lines, functions over 60.

Usage: `.venv/bin/python scripts/sizes.py [paths...]` (default: supervisor runners). Prints each
one over its limit and exits 1 if any is, 0 otherwise. A function's length runs from its `def`
(decorators included) to its last line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def over_limits(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{path}: module of {lines} lines (> {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno}: {node.name} is {length} lines (> {MAX_FUNCTION_LINES})")
    return found


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("supervisor"), Path("runners")]
    found = [f for root in roots for p in sorted(root.rglob("*.py")) for f in over_limits(p)]
    print("\n".join(found) or "every module and function is within the limits")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
