"""The TUI's modules import in one direction: no cycle, and screens never import the app or each other.

A static scan of every import statement under ``tui/`` (module level, inside
functions, and under ``TYPE_CHECKING`` alike): the app owns the step table
and decides the next screen, so a step screen names no other step screen and
never ``tui.app``; what it needs from the app is ``tui.installer.Installer``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUI = ROOT / "tui"
SHARED_SCREENS = {"tui.screens", "tui.screens.base", "tui.screens.dialogs", "tui.screens.help"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tui_graph() -> dict[str, set[str]]:
    """Module -> the ``tui`` modules it imports (``from tui.x import y`` counts ``tui.x.y`` too)."""
    modules = {module_name(p): p for p in sorted(TUI.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import loop, as a path from a module back to itself."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph[node]):
            if target in path:
                found.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_the_scan_sees_the_tui() -> None:
    graph = tui_graph()
    assert {"tui.app", "tui.screens.base", "tui.screens.hardware", "tui.installer"} <= set(graph)
    assert "tui.screens.hardware" in graph["tui.app"]  # the step table names the screens


def test_no_import_cycle_in_the_tui() -> None:
    assert cycles(tui_graph()) == []


def test_screens_import_neither_the_app_nor_another_step_screen() -> None:
    graph = tui_graph()
    offenders = [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        if module.startswith("tui.screens")
        for target in sorted(targets)
        if target == "tui.app"
        or (target.startswith("tui.screens.") and target not in SHARED_SCREENS)
    ]
    assert offenders == []
