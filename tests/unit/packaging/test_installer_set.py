"""The installer set: the appliance wheel and its dependency closure for the operator's machine.

pip is real throughout and offline: ``pip download`` from a local wheelhouse of
hand-made wheels; the appliance wheel is a hand-made one holding the files a
whole appliance must hold and depending on the wheelhouse's ``tinyapp`` (the
real one's closure would need PyPI). The procedure FORMAT.md documents for the
operator's machine (``pip install --no-index --find-links
files/installer-wheels appliance==V``) runs into a fresh virtualenv from a
built, signed and verified bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from appliance import __version__
from appliance.bundle.connected.recipe import InstallerSpec
from appliance.bundle.connected.sources import (
    INSTALLER_WHEEL_NEEDS,
    check_installer_wheel,
    fetch_installer,
)
from appliance.bundle.format import TARGETS_FILE
from appliance.bundle.manifest import bundle_contents, read_targets
from appliance.bundle.payload import MediaLayout, Payload, WheelSet
from appliance.bundle.site import contents
from appliance.errors import BundleBuildError, InputError, MetadataError
from appliance.events import drain
from tests.unit.bundle.test_build import gguf_recipe, run
from tests.unit.bundle.test_sources import make_wheel
from tests.unit.packaging.installed import clean_env

APPLIANCE = f"appliance-{__version__}-py3-none-any.whl"
MEDIA = MediaLayout(part_size=64 * 1024, parts=[])


def whole_appliance_wheel(directory: Path, *, missing: str | None = None) -> Path:
    """A hand-made appliance wheel: the files a whole appliance holds, depending on tinyapp."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = make_wheel(directory, "appliance", __version__, requires=["tinyapp>=1"])
    with zipfile.ZipFile(wheel, "a") as zf:
        for name in INSTALLER_WHEEL_NEEDS:
            if name != missing:
                zf.writestr(name, "")
    return wheel


@pytest.fixture
def house(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "tinyapp", "1.0", requires=["tinydep>=2"])
    make_wheel(house, "tinydep", "2.1")
    make_wheel(house, "unrelated", "0.1")
    return house


def installer_data(house: Path, **extra: Any) -> dict[str, Any]:
    return {
        "python": "3.11",
        "platforms": ["manylinux_2_17_x86_64"],
        "find_links": [str(house)],
        "no_index": True,
        **extra,
    }


# --- the payload and the recipe --------------------------------------------------------


def test_a_payload_without_installer_signs_as_before() -> None:
    payload = Payload(name="x", created="t", created_by="t", media=MEDIA)
    assert "installer" not in payload.model_dump(mode="json")
    wheels = WheelSet(python="3.11", platforms=["any"], requirements=["appliance==1"],
                      files=["installer-wheels/appliance-1-py3-none-any.whl"])  # fmt: skip
    with_it = Payload(name="x", created="t", created_by="t", media=MEDIA, installer=wheels)
    assert Payload.model_validate(with_it.model_dump(mode="json")) == with_it


def test_installer_files_live_under_installer_wheels() -> None:
    wheels = WheelSet(python="3.11", platforms=["any"], requirements=["appliance==1"],
                      files=["wheels/appliance-1-py3-none-any.whl"])  # fmt: skip
    with pytest.raises(ValueError, match="installer files must lie under installer-wheels/"):
        Payload(name="x", created="t", created_by="t", media=MEDIA, installer=wheels)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"requirements": ["x"]}, "the installer's requirements are the appliance wheel's own"),
        ({"python": "3.10"}, "the appliance needs Python 3.11 or newer; found '3.10'"),
        ({"appliance_wheel": "tool-1.0-py3-none-any.whl"}, "must name a wheel of appliance"),
    ],
)
def test_the_recipe_refuses_what_cannot_be_an_installer(
    tmp_path: Path, house: Path, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        gguf_recipe(tmp_path, installer=installer_data(house, **extra))


# --- fetching ---------------------------------------------------------------------------


def test_fetch_installer_is_the_wheel_and_its_closure(tmp_path: Path, house: Path) -> None:
    given = whole_appliance_wheel(tmp_path / "dist")
    spec = InstallerSpec.model_validate(installer_data(house, appliance_wheel=str(given)))
    fetched = fetch_installer(spec, tmp_path / "dl")
    entry = fetched.entry
    assert entry.requirements == [f"appliance=={__version__}"]
    assert entry.files == sorted(
        f"installer-wheels/{n}"
        for n in (APPLIANCE, "tinyapp-1.0-py3-none-any.whl", "tinydep-2.1-py3-none-any.whl")
    )  # the closure, nothing unrelated
    assert entry.no_deps == []
    assert entry.build_notes == {
        "appliance-wheel": f"given: {APPLIANCE}",
        "index-url": "none (no_index: find-links only)",
        "find-links": house.as_uri(),
    }
    copied = dict((rel, src) for src, rel in fetched.files)
    assert copied[f"installer-wheels/{APPLIANCE}"].read_bytes() == given.read_bytes()


def test_a_closure_that_cannot_be_resolved_offline_is_refused(tmp_path: Path) -> None:
    given = whole_appliance_wheel(tmp_path / "dist")
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = InstallerSpec.model_validate(installer_data(empty, appliance_wheel=str(given)))
    with pytest.raises(BundleBuildError, match="pip download failed"):
        fetch_installer(spec, tmp_path / "dl")


@pytest.mark.parametrize("missing", INSTALLER_WHEEL_NEEDS)
def test_a_wheel_that_is_not_a_whole_appliance_is_refused(tmp_path: Path, missing: str) -> None:
    wheel = whole_appliance_wheel(tmp_path / "dist", missing=missing)
    with pytest.raises(BundleBuildError, match=f"is not a whole appliance: it lacks {missing}"):
        check_installer_wheel(wheel)


def test_given_installer_wheels_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BundleBuildError, match="does not exist or is not a file"):
        check_installer_wheel(tmp_path / APPLIANCE)
    (tmp_path / APPLIANCE).write_bytes(b"not a zip")
    with pytest.raises(BundleBuildError, match="is not a wheel"):
        check_installer_wheel(tmp_path / APPLIANCE)
    other = whole_appliance_wheel(tmp_path / "old")
    renamed = other.rename(tmp_path / "old" / "appliance-0.0.9-py3-none-any.whl")
    notes = check_installer_wheel(renamed)
    assert notes == [
        f"the installer carries appliance 0.0.9; this build is appliance {__version__}"
    ]


def test_without_a_checkout_and_without_appliance_wheel_the_build_refuses(
    tmp_path: Path, house: Path
) -> None:
    installed = tmp_path / "site-packages" / "appliance"  # as from a wheel: no pyproject.toml
    installed.mkdir(parents=True)
    spec = InstallerSpec.model_validate(installer_data(house))
    with pytest.raises(BundleBuildError) as caught:
        fetch_installer(spec, tmp_path / "dl", package_dir=installed)
    assert "no installer.appliance_wheel" in caught.value.message
    assert f"{installed} is not in one" in caught.value.message
    assert "Set installer.appliance_wheel" in str(caught.value.hint)


def test_the_appliance_wheel_is_built_from_the_checkout(tmp_path: Path, house: Path) -> None:
    # The real wheel of this checkout; its real closure is not in the offline wheelhouse, so
    # pip download stops there: what matters here is that the build got that far with it.
    spec = InstallerSpec.model_validate(installer_data(house))
    with pytest.raises(BundleBuildError, match="pip download failed") as caught:
        fetch_installer(spec, tmp_path / "dl")
    built = tmp_path / "dl" / "appliance" / APPLIANCE
    assert built.is_file()
    assert check_installer_wheel(built) == []
    assert "(from appliance)" in caught.value.message  # the wheel's own dependencies


# --- build, verify, inspect, and the operator's install from the verified copy ----------


def test_a_bundle_carries_the_installer_and_the_operator_installs_from_it(
    tmp_path: Path, house: Path
) -> None:
    given = whole_appliance_wheel(tmp_path / "dist")
    recipe = gguf_recipe(tmp_path, installer=installer_data(house, appliance_wheel=str(given)))
    out, _ = run(recipe, tmp_path / "bundle")
    payload, records = bundle_contents(read_targets(out))
    assert payload.installer is not None
    listed = {r.path for r in records}
    assert set(payload.installer.files) <= listed
    contents.check_file_set(out / "files", records)  # what verify checks
    drain(contents.verify_contents(out / "files", records))

    inspect = subprocess.run(
        [sys.executable, "-m", "appliance", "bundle", "inspect", str(out), "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(inspect.stdout)["installer"] == payload.installer.model_dump(mode="json")

    venv = tmp_path / "operator"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
         "--no-index", "--find-links", str(out / "files/installer-wheels"),
         *payload.installer.requirements],
        check=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    found = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import importlib.metadata as m, json;"
         "print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions())))"],
        capture_output=True, text=True, check=True, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(found.stdout) == ["appliance", "tinyapp", "tinydep"]


def test_a_payload_naming_unlisted_installer_files_is_refused(tmp_path: Path, house: Path) -> None:
    given = whole_appliance_wheel(tmp_path / "dist")
    recipe = gguf_recipe(tmp_path, installer=installer_data(house, appliance_wheel=str(given)))
    out, _ = run(recipe, tmp_path / "bundle")
    targets = out / TARGETS_FILE
    data = json.loads(targets.read_bytes())
    listed = data["signed"]["targets"]  # renamed, so the media layout still adds up
    listed["installer-wheels/tinydep-2.2-py3-none-any.whl"] = listed.pop(
        "installer-wheels/tinydep-2.1-py3-none-any.whl"
    )
    targets.write_text(json.dumps(data))
    with pytest.raises(MetadataError, match=r"the payload's installer names files the manifest does not list: installer-wheels/tinydep-2\.1-"):  # fmt: skip
        bundle_contents(read_targets(out))
