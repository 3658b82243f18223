"""The gateway's wheel set: payload schema, fetch_gateway, build wiring, verify and inspect.

pip is real throughout: ``pip download`` from a local wheelhouse of hand-made
wheels (no index), ``pip wheel`` of this very checkout with the installed
hatchling. The pins are replaced by the wheelhouse's (the real ones would need
PyPI); the one stand-in is ``FAKE_PIP_WITHOUT_HATCHLING``, a script that
answers like pip does when the build backend is missing.
"""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from appliance import __version__
from appliance.bundle.connected import build as build_module
from appliance.bundle.connected.recipe import GatewaySpec
from appliance.bundle.connected.sources import (
    appliance_wheel,
    check_appliance_wheel,
    fetch_gateway,
    source_checkout,
)
from appliance.bundle.format import TARGETS_FILE
from appliance.bundle.manifest import bundle_contents, read_targets
from appliance.bundle.payload import MediaLayout, Payload, WheelSet
from appliance.bundle.site import contents
from appliance.errors import BundleBuildError, MetadataError
from appliance.events import Progress, drain
from tests.unit.bundle.test_build import gguf_recipe, run
from tests.unit.bundle.test_sources import make_wheel

ROOT = Path(__file__).resolve().parents[3]
PINS = ["tinyapp==1.0", "tinydep==2.1"]  # the wheelhouse's closure stands in for the real pins
MEDIA = MediaLayout(part_size=64 * 1024, parts=[])
APPLIANCE = f"appliance-{__version__}-py3-none-any.whl"


def appliance_wheel_file(directory: Path, name: str = APPLIANCE, *, gateway: bool = True) -> Path:
    """A hand-made wheel with the appliance's layout (enough for the checks and pip)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("appliance/__init__.py", "")
        if gateway:
            zf.writestr("appliance/gateway/__main__.py", "")
    return path


@pytest.fixture
def house(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "tinyapp", "1.0", requires=["tinydep>=2"])
    make_wheel(house, "tinydep", "2.1")
    make_wheel(house, "unrelated", "0.1")
    return house


def gateway_data(house: Path, **extra: Any) -> dict[str, Any]:
    return {
        "python": "3.11",
        "platforms": ["manylinux_2_17_x86_64"],
        "find_links": [str(house)],
        "no_index": True,
        **extra,
    }


def spec(house: Path, **extra: Any) -> GatewaySpec:
    return GatewaySpec.model_validate(gateway_data(house, **extra))


# --- the payload ---------------------------------------------------------------------


def gateway_set(**extra: Any) -> WheelSet:
    files = ["gateway-wheels/tinyapp-1.0-py3-none-any.whl", f"gateway-wheels/{APPLIANCE}"]
    data = {"python": "3.11", "platforms": ["any"], "requirements": ["tinyapp==1.0"],
            "files": files, "no_deps": [f"gateway-wheels/{APPLIANCE}"]}  # fmt: skip
    return WheelSet.model_validate(data | extra)


def test_payload_round_trip_with_and_without_gateway() -> None:
    old = {"name": "n", "created": "c", "created_by": "appliance 0.1.0",
           "media": {"part_size": 65536, "parts": []},
           "wheels": {"python": "3.11", "platforms": ["any"], "requirements": ["x"],
                      "files": ["wheels/x-1-py3-none-any.whl"], "build_notes": {}}}  # fmt: skip
    payload = Payload.model_validate(old)  # written before gateway and no_deps existed
    assert payload.gateway is None and payload.wheels is not None
    assert payload.wheels.no_deps == []
    # Without a gateway the payload is signed exactly as before: older appliances read it.
    assert payload.model_dump(mode="json") == {**old, "format": 1, "channel": "stable",
        "profiles": [], "model": None, "adapters": [], "artifacts": []}  # fmt: skip

    with_gateway = payload.model_copy(update={"gateway": gateway_set()})
    dumped = json.loads(json.dumps(with_gateway.model_dump(mode="json")))
    assert dumped["gateway"]["no_deps"] == [f"gateway-wheels/{APPLIANCE}"]
    assert list(dumped).index("gateway") == list(dumped).index("wheels") + 1
    assert Payload.model_validate(dumped) == with_gateway


def test_no_deps_must_be_files() -> None:
    with pytest.raises(ValueError, match=r"no_deps lists paths that are not in files: x\.whl"):
        gateway_set(no_deps=["x.whl"])


def test_gateway_files_live_under_gateway_wheels() -> None:
    stray = gateway_set(files=["wheels/a-1-py3-none-any.whl"], no_deps=[])
    with pytest.raises(ValueError, match="gateway files must lie under gateway-wheels/"):
        Payload(name="n", created="c", created_by="t", media=MEDIA, gateway=stray)


# --- fetch_gateway ---------------------------------------------------------------------


def test_fetch_gateway_records_everything_under_gateway_wheels(tmp_path: Path, house: Path) -> None:
    given = appliance_wheel_file(tmp_path / "dist")
    fetched = fetch_gateway(
        spec(house, appliance_wheel=str(given)), tmp_path / "dl", requirements=PINS
    )
    entry = fetched.entry
    assert entry.files == [
        f"gateway-wheels/{APPLIANCE}",
        "gateway-wheels/tinyapp-1.0-py3-none-any.whl",
        "gateway-wheels/tinydep-2.1-py3-none-any.whl",
    ]
    assert entry.no_deps == [f"gateway-wheels/{APPLIANCE}"]
    assert set(entry.no_deps) <= set(entry.files)
    assert entry.requirements == PINS
    assert entry.build_notes == {
        "appliance-wheel": f"given: {APPLIANCE}",
        "index-url": "none (no_index: find-links only)",
        "find-links": house.as_uri(),
    }  # where the closure came from
    assert (entry.python, entry.platforms) == ("3.11", ["manylinux_2_17_x86_64"])
    assert sorted(rel for _, rel in fetched.files) == entry.files
    assert (given, f"gateway-wheels/{APPLIANCE}") in fetched.files
    assert fetched.notes == []


def test_a_download_beyond_the_pins_is_refused(tmp_path: Path, house: Path) -> None:
    given = appliance_wheel_file(tmp_path / "dist")
    with pytest.raises(BundleBuildError, match=r"does not pin: tinydep 2\.1") as caught:
        fetch_gateway(
            spec(house, appliance_wheel=str(given)), tmp_path / "dl", requirements=["tinyapp==1.0"]
        )
    assert "whole dependency closure" in str(caught.value.hint)


def test_without_a_checkout_and_without_appliance_wheel_the_build_refuses(
    tmp_path: Path, house: Path
) -> None:
    installed = tmp_path / "site-packages" / "appliance"  # as from a wheel: no pyproject.toml
    installed.mkdir(parents=True)
    dest = tmp_path / "dl"
    with pytest.raises(BundleBuildError) as caught:
        fetch_gateway(spec(house), dest, requirements=PINS, package_dir=installed)
    message = caught.value.message
    assert "needs the appliance wheel" in message
    assert "no gateway.appliance_wheel" in message  # what was expected
    assert f"{installed} is not in one" in message  # what was found
    assert str(tmp_path / "site-packages" / "pyproject.toml") in message
    assert "Set gateway.appliance_wheel" in str(caught.value.hint)  # what to do
    assert not (dest / "closure").exists()  # refused before any download


def test_source_checkout_is_appliances_own(tmp_path: Path) -> None:
    assert source_checkout() == ROOT  # these tests run from the checkout
    other = tmp_path / "other"
    (other / "appliance").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "not-appliance"\n')
    assert source_checkout(other / "appliance") is None
    (other / "pyproject.toml").write_text("[project\n")
    assert source_checkout(other / "appliance") is None


def test_the_appliance_wheel_is_built_from_the_checkout(tmp_path: Path, house: Path) -> None:
    """Real pip wheel of this checkout, with the installed hatchling and no index."""
    wheel, note, notes = appliance_wheel(spec(house), tmp_path / "built")
    assert wheel.name == APPLIANCE
    assert note.startswith("built from checkout at ") and note != "built from checkout at "
    assert notes == []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"appliance/gateway/__main__.py", "appliance/gateway/requirements.txt"} <= names
    assert not [n for n in names if "__pycache__" in n]


FAKE_PIP_WITHOUT_HATCHLING = """#!/bin/sh
echo "pip subprocess to build wheel" >&2
echo "ModuleNotFoundError: No module named 'hatchling'" >&2
exit 1
"""


def test_a_missing_build_backend_is_explained(tmp_path: Path, house: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "appliance").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "appliance"\n')
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PIP_WITHOUT_HATCHLING)
    fake.chmod(0o755)
    with pytest.raises(BundleBuildError, match="No module named 'hatchling'") as caught:
        fetch_gateway(spec(house), tmp_path / "dl", requirements=PINS,
                      package_dir=checkout / "appliance", python=str(fake))  # fmt: skip
    assert "cannot build the appliance wheel" in caught.value.message
    assert "hatchling" in str(caught.value.hint) and "appliance_wheel" in str(caught.value.hint)


def test_given_appliance_wheels_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BundleBuildError, match="does not exist or is not a file"):
        check_appliance_wheel(tmp_path / APPLIANCE)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / APPLIANCE).write_text("not a zip")
    with pytest.raises(BundleBuildError, match="is not a wheel"):
        check_appliance_wheel(tmp_path / "junk" / APPLIANCE)
    hollow = appliance_wheel_file(tmp_path / "hollow", gateway=False)
    with pytest.raises(BundleBuildError, match=r"holds no appliance/gateway/__main__\.py"):
        check_appliance_wheel(hollow)
    other = appliance_wheel_file(tmp_path / "other", "appliance-9.9-py3-none-any.whl")
    [note] = check_appliance_wheel(other)
    assert f"appliance 9.9, but the gateway's pinned dependencies are those of appliance {__version__}" in note  # fmt: skip


# --- the build, verify and inspect ---------------------------------------------------------


def test_build_puts_the_gateway_next_to_the_wheels(
    tmp_path: Path, house: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        build_module, "fetch_gateway", functools.partial(fetch_gateway, requirements=PINS)
    )
    given = appliance_wheel_file(tmp_path / "dist")
    wheels = {"python": "3.11", "platforms": ["manylinux_2_17_x86_64"], "requirements": ["tinyapp"],
              "find_links": [str(house)], "no_index": True}  # fmt: skip
    recipe = gguf_recipe(
        tmp_path, wheels=wheels, gateway=gateway_data(house, appliance_wheel=str(given))
    )
    out, events = run(recipe, tmp_path / "bundle")

    payload, records = bundle_contents(read_targets(out))
    paths = [r.path for r in records]
    assert paths == [
        f"gateway-wheels/{APPLIANCE}",
        "gateway-wheels/tinyapp-1.0-py3-none-any.whl",
        "gateway-wheels/tinydep-2.1-py3-none-any.whl",
        "models/m.gguf",
        "wheels/tinyapp-1.0-py3-none-any.whl",
        "wheels/tinydep-2.1-py3-none-any.whl",
    ]
    gateway = payload.gateway
    assert gateway is not None and payload.wheels is not None
    assert gateway.files == paths[:3] and set(gateway.no_deps) <= set(gateway.files)
    assert gateway.no_deps == [f"gateway-wheels/{APPLIANCE}"]
    assert gateway.requirements == PINS
    assert gateway.build_notes["appliance-wheel"] == f"given: {APPLIANCE}"
    assert payload.wheels.files == paths[4:] and payload.wheels.no_deps == []
    assert (out / "files" / gateway.no_deps[0]).read_bytes() == given.read_bytes()
    fetches = [e.item for e in events if isinstance(e, Progress) and e.operation == "fetch"]
    assert fetches == ["model m", "2 wheels", "3 gateway wheels"]
    assert [e.total_items for e in events if isinstance(e, Progress) and e.operation == "fetch"] == [3] * 3  # fmt: skip

    contents.check_file_set(out / "files", records)  # what verify checks
    drain(contents.verify_contents(out / "files", records))

    from appliance.cli.main import main

    capsys.readouterr()
    assert main(["bundle", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "gateway wheels for Python 3.11: 3 files, 2 pinned requirements + "
        f"{APPLIANCE} (--no-deps); appliance-wheel: given: {APPLIANCE}"
    ) in text
    assert main(["bundle", "inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gateway"] == gateway.model_dump(mode="json")


def test_a_payload_naming_unlisted_gateway_files_is_refused(
    tmp_path: Path, house: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        build_module, "fetch_gateway", functools.partial(fetch_gateway, requirements=PINS)
    )
    given = appliance_wheel_file(tmp_path / "dist")
    recipe = gguf_recipe(tmp_path, gateway=gateway_data(house, appliance_wheel=str(given)))
    out, _ = run(recipe, tmp_path / "bundle")
    targets = out / TARGETS_FILE
    data = json.loads(targets.read_bytes())
    listed = data["signed"]["targets"]  # renamed, so the media layout still adds up
    listed["gateway-wheels/tinydep-2.2-py3-none-any.whl"] = listed.pop(
        "gateway-wheels/tinydep-2.1-py3-none-any.whl"
    )
    targets.write_text(json.dumps(data))
    with pytest.raises(MetadataError, match=r"the payload's gateway names files the manifest does not list: gateway-wheels/tinydep-2\.1-"):  # fmt: skip
        bundle_contents(read_targets(out))
