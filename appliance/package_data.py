"""Where appliance's own data files are: one resolver, the same for a checkout and a wheel.

The templates, playbooks and built-in hardware profiles live inside the
package, under ``appliance/_data/`` (the checkout's top-level ``playbooks``
and ``hardware_profiles`` are symlinks into it, so plain ``ansible-playbook
playbooks/deploy.yml`` and the documented paths keep working). They are
located with ``importlib.resources`` relative to the imported ``appliance``
package, never relative to a checkout: an editable install, a plain checkout
on ``sys.path`` and an installed wheel take the same path through this module.

Invariants:
- nothing here reads a file or checks existence at import: the gateway's
  virtualenv installs the appliance wheel with ``--no-deps`` and imports
  only ``appliance.gateway``, which never needs these files;
- the paths are real directories (Ansible and Jinja's file loader need them):
  appliance imported from a zip archive is refused by ``require`` with a
  message, not a ``TemplateNotFound`` later.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from appliance.errors import InstallationError


def _package_dir() -> Path | None:
    found = resources.files("appliance")
    # A regular package installed by pip or in a checkout is a directory on disk; an
    # import from a zip archive (zipimport) is not, and cannot serve Ansible a playbook.
    return found if isinstance(found, Path) else None


PACKAGE_DIR = _package_dir()  # the imported ``appliance`` package, or None from a zip
DATA_DIR = (PACKAGE_DIR or Path("appliance")) / "_data"
PLAYBOOKS_DIR = DATA_DIR / "playbooks"  # deploy.yml, render.yml (the Ansible engine)
TEMPLATES_DIR = PLAYBOOKS_DIR / "templates"  # rendered by both engines
PROFILES_DIR = DATA_DIR / "hardware_profiles"  # the built-in hardware profiles

INSTALL_HINT = (
    "appliance's installation is incomplete. Reinstall it from its wheel "
    "(pip install --force-reinstall appliance-<version>-py3-none-any.whl, see "
    "bundles/FORMAT.md 'installer'), or from a checkout with pip install -e ."
)


def require(path: Path, what: str) -> Path:
    """``path`` (one of the directories above) if it is a directory, else InstallationError."""
    if PACKAGE_DIR is None:
        raise InstallationError(
            f"appliance is imported from {resources.files('appliance')}, not a directory: "
            f"the {what} must be files on disk",
            hint=INSTALL_HINT,
        )
    if not path.is_dir():
        raise InstallationError(
            f"the {what} shipped with appliance are missing: expected the directory {path}",
            hint=INSTALL_HINT,
        )
    return path
