"""appliance/gateway/requirements.txt: the gateway's pinned runtime, as the bundle build ships it.

The pins must be the versions the gateway is tested with (those installed in
this development venv: a dependency bump that forgets the file fails here), and
they must cover what the gateway loads. What it loads is checked once, in
``test_runtime_imports.py`` (every third-party module loaded is in ``NEEDED``);
here ``NEEDED`` must be pinned, and the pins must be closed under their own
dependencies (else ``bundle build`` would refuse the unpinned download).
"""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.requirements import Requirement

from appliance.bundle.connected.sources import canonical_name, gateway_requirements, parse_pins
from appliance.errors import BundleBuildError
from tests.unit.gateway.test_runtime_imports import NEEDED

PINS = {canonical_name(p.split("==")[0]): p.split("==")[1] for p in gateway_requirements()}
# The gateway's direct needs with the extras it uses (pyproject's dependencies).
ROOTS = ["starlette", "uvicorn", "httpx", "PyJWT[crypto]", "pydantic", "PyYAML", "sniffio"]


def test_pins_are_the_versions_the_gateway_is_tested_with() -> None:
    installed = {name: metadata.version(name) for name in PINS}
    moved = {name: (PINS[name], installed[name]) for name in PINS if PINS[name] != installed[name]}
    assert not moved, (
        f"appliance/gateway/requirements.txt pins other versions than the dev venv has "
        f"(pinned, installed): {moved}; update the pins with the dependency"
    )


def test_every_wheel_the_gateway_loads_is_pinned() -> None:
    needed = {canonical_name(wheel) for wheel in NEEDED.values()} - {"appliance"}
    assert needed - set(PINS) == set(), "loaded at runtime but not pinned"
    assert set(PINS) - needed == set(), "pinned but not among the gateway's wheels (NEEDED)"


def test_the_pins_are_a_closed_set() -> None:
    """Every dependency of a pinned package (markers for this Python) is pinned too."""
    todo = [Requirement(root) for root in ROOTS]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonical_name(req.name)
        assert name in PINS, f"{req} (needed by the gateway) is not pinned"
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for dep in metadata.requires(name) or []:
            dep_req = Requirement(dep)
            envs = [{"extra": extra} for extra in req.extras] or [{"extra": ""}]
            if dep_req.marker is None or any(dep_req.marker.evaluate(e) for e in envs):
                todo.append(dep_req)
    assert {k.split("[")[0] for k in seen} == set(PINS), "pinned but needed by nothing"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("starlette>=1.0\n", "line 1: expected `name==version`"),
        ("# only a comment\n\n", "pins nothing"),
        ("PyYAML==6.0.2\npyyaml==6.0.2\n", "line 2: pyyaml is pinned twice"),
        ("-r other.txt\n", "expected `name==version`"),
    ],
)
def test_pin_file_errors(text: str, message: str) -> None:
    with pytest.raises(BundleBuildError, match=message):
        parse_pins(text, "requirements.txt")


def test_comments_and_blank_lines_are_skipped() -> None:
    assert parse_pins("# header\n\nanyio==4.16.0  # why\n", "r") == ["anyio==4.16.0"]
