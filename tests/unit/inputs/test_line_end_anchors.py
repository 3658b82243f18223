"""Names and digests checked with Python regular expressions refuse a trailing newline.

Python's ``$`` also matches before a final ``\\n``; a key name, lab name, digest,
expiry or kept-root name ending in a newline must be refused like any other
bad character, not slip through and be printed raw or used in a path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle import keys, manifest, signed_types, trust
from appliance.bundle.site import state
from appliance.errors import InputError
from appliance.lab import inventory_files, network


@pytest.mark.parametrize(
    ("pattern", "good"),
    [
        (keys._NAME, "alice"),
        (network.NAME_RE, "ci-2"),
        (manifest._HEX64, "a" * 64),
        (trust._ED25519_HEX, "A" * 64),
        (signed_types._EXPIRES, "2030-01-01T00:00:00Z"),
        (state._KEPT_NAME, "2.root.json"),
        (inventory_files._PLAIN, "/run/x"),
    ],
)
def test_a_trailing_newline_does_not_match(pattern, good: str) -> None:  # type: ignore[no-untyped-def]
    assert pattern.match(good)
    assert not pattern.match(good + "\n")


def test_key_and_lab_names_with_a_newline_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        keys.generate_key(tmp_path, "alice\n")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError):
        network.check_name("lab\n")
