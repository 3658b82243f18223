"""One resolver for appliance's own data: no module locates files relative to its source file.

A path built from ``__file__`` works in a checkout and breaks in an installed
wheel (where the checkout's top-level directories do not exist); the data is
found through ``appliance.package_data`` (importlib.resources) instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from appliance import package_data
from appliance.deploy import render
from appliance.deploy.engines import ansible as ansible_engine
from appliance.errors import InstallationError
from appliance.exitcodes import ExitCode
from appliance.plan.profiles import builtin_profiles_dir

ROOT = Path(__file__).resolve().parents[3]


def test_no_module_locates_data_relative_to_its_source_file() -> None:
    offenders = []
    for package in ("appliance", "tui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Name) and node.id == "__file__":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], "use appliance.package_data (importlib.resources) instead"


def test_every_data_directory_is_inside_the_imported_package() -> None:
    package = Path(str(package_data.PACKAGE_DIR))
    for path in (render.TEMPLATES, ansible_engine.PLAYBOOKS, builtin_profiles_dir()):
        assert path.is_dir()
        assert path.resolve().is_relative_to(package.resolve())
    assert ansible_engine.PLAYBOOK.is_file()


def test_missing_templates_are_an_installation_error_not_template_not_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(render, "TEMPLATES", tmp_path / "gone")
    with pytest.raises(InstallationError) as caught:
        render.render("appliance-model.service.j2", {})
    assert str(tmp_path / "gone") in caught.value.message
    assert caught.value.hint is not None and "Reinstall" in caught.value.hint
    assert caught.value.exit_code == ExitCode.INTERNAL


def test_missing_profiles_are_an_installation_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(package_data, "PROFILES_DIR", tmp_path / "gone")
    with pytest.raises(InstallationError, match="hardware profiles shipped with appliance"):
        builtin_profiles_dir()


def test_appliance_imported_from_a_zip_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package_data, "PACKAGE_DIR", None)
    with pytest.raises(InstallationError, match="must be files on disk"):
        package_data.require(package_data.TEMPLATES_DIR, "templates")
