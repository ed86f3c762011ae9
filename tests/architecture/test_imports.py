"""Import rules that import-linter's module-level contracts cannot express."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "processor_guard"


def _imports_from(path: Path) -> list[tuple[str, str, int]]:
    """(absolute module, imported name, line) for every ``from X import name`` in a file."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        found.extend((module, alias.name, node.lineno) for alias in node.names)
    return found


def test_writes_reach_leases_only_through_current_lease() -> None:
    # (and the type it returns)
    offending = [
        f"{path.relative_to(SRC)}:{line} imports {name} from {module}"
        for path in (SRC / "writes").rglob("*.py")
        for module, name, line in _imports_from(path)
        if module.startswith("processor_guard.leases") and name not in ("current_lease", "Lease")
    ]
    assert offending == []


def test_no_private_name_is_imported_from_another_module() -> None:
    offending = [
        f"{path.relative_to(SRC)}:{line} imports {name} from {module}"
        for path in SRC.rglob("*.py")
        for module, name, line in _imports_from(path)
        if module.startswith("processor_guard")
        and name.startswith("_")
        and not name.startswith("__")
    ]
    assert offending == []


def test_the_checks_see_relative_imports() -> None:
    # Guards the two tests above against passing because they read nothing.
    merge = _imports_from(SRC / "writes" / "merge.py")
    assert (
        "processor_guard.leases",
        "current_lease",
        next(line for module, name, line in merge if name == "current_lease"),
    ) in merge


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        body = body[1:]  # the docstring does not count
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]


def test_long_functions_and_classes_say_why() -> None:
    # A function over 60 lines or a class over 300 (docstrings aside) carries a
    # "# Long: ..." comment in its first lines saying why it is one piece.
    limits = {ast.FunctionDef: 60, ast.AsyncFunctionDef: 60, ast.ClassDef: 300}
    unexplained = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            limit = limits.get(type(node))
            if limit is None or _body_lines(node) <= limit:  # type: ignore[arg-type]
                continue
            head = lines[node.lineno - 1 : node.body[0].lineno + 25]  # type: ignore[attr-defined]
            if not any(line.strip().startswith("# Long:") for line in head):
                unexplained.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")  # type: ignore[attr-defined]
    assert unexplained == []
