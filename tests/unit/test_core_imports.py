"""The core never loads a front end (Textual, Rich, the CLI framework, appliance.cli, tui).

The import statements themselves are checked by import-linter (the contract "The core never
imports a front end" in pyproject.toml, run by `make imports`), including imports inside
functions. What a static scan cannot see is checked here: a subprocess imports every core
module and looks at what actually got loaded (catching a dependency that drags a UI in),
and the TUI is imported by `appliance tui` alone, and only when it runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "appliance"
FRONT_ENDS = ("appliance/cli/", "appliance/__main__.py")
FORBIDDEN = ("textual", "rich", "argparse", "click", "typer", "appliance.cli", "tui")


def core_files() -> list[Path]:
    return [
        p
        for p in sorted(CORE.rglob("*.py"))
        if not any(str(p.relative_to(ROOT)).startswith(f) for f in FRONT_ENDS)
    ]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_core_files_are_found() -> None:
    names = {module_name(p) for p in core_files()}
    assert {"appliance.plan.report", "appliance.plan.profiles", "appliance.plan.fit"} <= names
    assert not any(n.startswith("appliance.cli") for n in names)


def test_importing_every_core_module_loads_no_front_end() -> None:
    modules = [module_name(p) for p in core_files() if p.name != "__main__.py"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = json.loads(result.stdout)
    bad = [m for m in loaded if is_forbidden(m)]
    assert not bad, f"importing the core loaded {bad}"


# --- the TUI: only `appliance tui` loads it, and only when it runs ---------------------------

TUI_LAUNCHER = ("appliance/cli/main.py", "cmd_tui")  # the one function allowed to import tui


def tui_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, enclosing function or None at module level) for every ``tui`` import."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                else function
            )
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            found.extend((n, function) for n in names if n == "tui" or n.startswith("tui."))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), None)
    return found


def test_only_the_tui_command_imports_tui_and_only_lazily() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for module, function in tui_imports(path):
            if (rel, function) != TUI_LAUNCHER:
                offenders.append(f"{rel}: {module} (in {function or 'module level'})")
    assert not offenders, f"tui imported outside `appliance tui`: {offenders}"
    assert tui_imports(ROOT / TUI_LAUNCHER[0]), (
        "the launcher no longer imports tui: update the test"
    )


def test_the_cli_parses_and_runs_other_commands_without_loading_textual() -> None:
    code = (
        "import json, sys\n"
        "from appliance.cli.main import build_parser, main\n"
        "build_parser().parse_args(['tui', '--facts', 'x.json'])\n"
        "main(['profiles', '--json'])\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = json.loads(result.stderr.strip().splitlines()[-1])
    bad = [m for m in loaded if m.split(".")[0] in ("textual", "tui")]
    assert not bad, f"the CLI loaded {bad} without running the TUI"
