"""An appliance installed from its own wheel into a fresh virtualenv: no editable install, no checkout.

The wheel is built the way ``appliance bundle build`` builds the gateway's
(``appliance.bundle.connected.sources.build_appliance_wheel``: ``pip wheel --no-deps
--no-build-isolation --no-index``), then installed with ``pip --python NEW
install --no-deps --no-index`` into ``python -m venv --without-pip NEW``: pip
runs against NEW only, so it can neither see nor touch the development
install.

Why the dependencies come through a ``.pth`` file: they cannot be installed
offline from an index here, and rebuilding wheels of every installed
distribution is slow and lossy. The ``.pth`` holds exactly the running
virtualenv's site-packages directories. A path in a ``.pth`` file is appended
to ``sys.path`` but its own ``.pth`` files are NOT processed (only site
directories are), so the development install's editable finder
(``_editable_impl_appliance.pth`` naming the checkout) never takes effect; and
NEW's site-packages comes first, so ``import appliance`` finds the wheel's
regular package. ``sources_on`` proves both for every test that uses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.connected.sources import build_appliance_wheel

ROOT = Path(__file__).resolve().parents[3]
DEV_SITE_PACKAGES = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def appliance(self) -> Path:
        return self.venv / "bin" / "appliance"

    @property
    def site_packages(self) -> Path:
        return (
            self.venv
            / "lib"
            / f"python{sys.version_info.major}.{sys.version_info.minor}"
            / "site-packages"
        )


def clean_env() -> dict[str, str]:
    """The environment without anything that could put a checkout on ``sys.path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def build_wheel(out: Path) -> Path:
    return build_appliance_wheel(ROOT, out)


def install(wheel: Path, venv: Path) -> Installed:
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "--disable-pip-version-check", "--no-input", "-q", str(wheel)],
        check=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    installed = Installed(venv, wheel)
    (installed.site_packages / "dev-dependencies.pth").write_text(
        "".join(f"{path}\n" for path in DEV_SITE_PACKAGES)
    )
    return installed


def run(
    installed: Installed, *args: str | Path, cwd: Path, expect: int = 0, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``appliance ARGS`` (the installed console script) in ``cwd``; exit status asserted."""
    result = subprocess.run(
        [str(installed.appliance), *map(str, args)], cwd=cwd, env=clean_env(), capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == expect, (args, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    return result


def python(installed: Installed, code: str, *, cwd: Path) -> object:
    """Run ``code`` with the installed interpreter; it prints one JSON value, returned."""
    result = subprocess.run(
        [str(installed.python), "-c", code], cwd=cwd, env=clean_env(), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def is_checkout(directory: Path) -> bool:
    try:
        project = tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return bool(project.get("project", {}).get("name") == "appliance")


def in_checkout(path: Path) -> bool:
    """``path`` is, or lies inside, an appliance source checkout."""
    path = path.resolve()
    return any(is_checkout(p) for p in (path, *path.parents))


def sources_on(paths: list[str], installed: Installed) -> list[str]:
    """The entries of ``paths`` that could import appliance's code from anywhere but the wheel.

    Such an entry is a checkout root, or holds an ``appliance`` or ``tui`` package, and is
    not the install's own site-packages. (The development site-packages lies inside the
    checkout, ``.venv``, and is allowed: it holds no ``appliance/__init__.py``, as the
    editable install is a finder in a ``.pth`` file that is never processed here.)
    """
    own = installed.site_packages.resolve()
    found = []
    for entry in paths:
        path = Path(entry).resolve()
        if path == own:
            continue
        packages = any((path / name / "__init__.py").exists() for name in ("appliance", "tui"))
        if packages or is_checkout(path):
            found.append(entry)
    return found
