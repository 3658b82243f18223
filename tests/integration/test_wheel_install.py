"""The appliance installed from its own wheel deploys: ``--dry-run`` and ``--emit-ansible`` on a lab host.

The wheel is built from this checkout and installed into a fresh virtualenv
exactly as ``tests/unit/packaging`` does (``installed.py``: not editable, no
checkout on ``sys.path``, asserted there); every command here is that
install's ``appliance`` console script, run from a directory outside any
checkout. The signed demo-cpu bundle and its keys come from the session's
helpers (built with the checkout's CLI: who builds a bundle is not what is
under test). The dry run renders every template (the plan's ``render``
changes) and reads the host's facts over SSH; ``--emit-ansible`` names the
playbook the installed engine would run, which plain ``ansible-playbook``
then checks.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.lab.state import Lab
from tests.integration import helpers
from tests.unit.packaging.installed import (
    Installed,
    build_wheel,
    clean_env,
    in_checkout,
    install,
    run,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    wheel = build_wheel(tmp_path_factory.mktemp("wheel") / "dist")
    return install(wheel, tmp_path_factory.mktemp("venv") / "venv")


def test_the_installed_wheel_plans_a_deploy_on_a_lab_host(
    make_lab: Callable[[str, int], contextlib.AbstractContextManager[Lab]],
    installed: Installed,
    tmp_path: Path,
) -> None:
    # A fresh host of its own: the session's host already serves what other tests deployed.
    with make_lab("wheel", 1) as lab:
        _plan_from_the_wheel(lab, installed, tmp_path)


def _plan_from_the_wheel(lab_host: Lab, installed: Installed, tmp_path: Path) -> None:
    work = tmp_path / "site"
    work.mkdir()
    assert not in_checkout(work)
    helpers.build_demo_bundles(work, (1,))
    run(installed, "bundle", "verify", "demo-1", "--trust", "keys/root.json", cwd=work)

    dry = run(installed, "deploy", "--profile", "cpu-llamacpp", "--bundle", "demo-1", "--trust",
              "keys/root.json", "--inventory", lab_host.inventory, "--dry-run", "--json",
              cwd=work, timeout=600)  # fmt: skip
    changes = json.loads(dry.stdout)["hosts"][0]["changes"]
    kinds = {c["kind"] for c in changes}
    assert {"put-file", "render", "activate", "switch-current", "start"} <= kinds
    rendered = [c for c in changes if c["kind"] == "render"]
    assert any("appliance-model.service" in json.dumps(c) for c in rendered), rendered
    host = lab_host.hosts[0]
    assert (
        helpers.on(lab_host, host, "test -e /opt/appliance/current && echo yes || echo no").strip()
        == "no"
    )

    emitted = run(installed, "deploy", "--profile", "cpu-llamacpp", "--bundle", "demo-1", "--trust",
                  "keys/root.json", "--inventory", lab_host.inventory, "--emit-ansible", "ansible",
                  "--json", cwd=work, timeout=600)  # fmt: skip
    command = json.loads(emitted.stdout)["command"]
    playbook = Path(command.rsplit(" ", 1)[-1])
    assert playbook.is_file()
    assert playbook.resolve().is_relative_to(installed.site_packages.resolve()), command
    # Plain Ansible accepts the installed playbook with the emitted files (templates/ beside it).
    ansible = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    assert ansible is not None
    check = subprocess.run(
        [ansible, "--syntax-check", "-i", str(work / "ansible/inventory/hosts.ini"), str(playbook)],
        cwd=work, env=clean_env() | {"ANSIBLE_CONFIG": str(work / "ansible/ansible.cfg")},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
