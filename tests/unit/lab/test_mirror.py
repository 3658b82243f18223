"""Mirror choice from apt sources: recorded files of this machine kind, both formats, edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.lab.errors import LabPrerequisiteError
from appliance.lab.mirror import (
    MIRROR_ENV,
    AptSource,
    choose_mirror,
    find_mirror,
    parse_deb822,
    parse_one_line,
)

DATA = Path(__file__).parent / "data"


def test_recorded_debian_sources_give_the_main_archive() -> None:
    sources = parse_deb822((DATA / "debian.sources").read_text())
    assert [s.suites for s in sources] == [
        ("bookworm", "bookworm-updates"),
        ("bookworm-security",),
    ]
    assert choose_mirror(sources, "bookworm") == "http://deb.debian.org/debian"


def test_deb822_continuation_disabled_stanza_and_case() -> None:
    text = (
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "# a comment\ntypes: deb deb-src\nuris:\n http://mirror.example/debian/\n"
        "suites: bookworm\ncomponents: main contrib\n"
    )
    sources = parse_deb822(text)
    assert sources[0].enabled is False
    assert sources[1].uris == ("http://mirror.example/debian/",)
    assert choose_mirror(sources, "bookworm") == "http://mirror.example/debian"


def test_one_line_format_with_options_and_comments() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://m.example/debian bookworm main  # x\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    )
    sources = parse_one_line(text)
    assert sources[1] == AptSource(
        ("deb",), ("https://m.example/debian",), ("bookworm",), ("main",)
    )
    assert choose_mirror(sources, "bookworm") == "https://m.example/debian"


def test_other_release_mirror_serves_bookworm_but_security_does_not() -> None:
    trixie = AptSource(("deb",), ("http://m.example/debian",), ("trixie",), ("main",))
    security = AptSource(
        ("deb",), ("http://security.debian.org/debian-security",), ("trixie-security",), ("main",)
    )
    assert choose_mirror([security, trixie], "bookworm") == "http://m.example/debian"
    assert choose_mirror([security], "bookworm") is None


def test_non_main_or_unknown_scheme_is_not_used() -> None:
    assert (
        choose_mirror([AptSource(("deb",), ("cdrom:[x]/",), ("bookworm",), ("main",))], "bookworm")
        is None
    )
    assert (
        choose_mirror(
            [AptSource(("deb",), ("http://x/debian",), ("bookworm",), ("contrib",))], "bookworm"
        )
        is None
    )


def test_find_mirror_reads_files_as_apt_does(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/off.list.disabled").write_text(
        "deb http://ignored/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d/debian.sources").write_text((DATA / "debian.sources").read_text())
    assert find_mirror("bookworm", apt_dir=tmp_path, environ={}) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list").write_text("deb http://first.example/debian bookworm main\n")
    assert find_mirror("bookworm", apt_dir=tmp_path, environ={}) == "http://first.example/debian"


def test_environment_override_wins(tmp_path: Path) -> None:
    assert (
        find_mirror("bookworm", apt_dir=tmp_path, environ={MIRROR_ENV: "http://o.example/debian/"})
        == "http://o.example/debian"
    )


def test_no_mirror_is_a_clear_usage_error(tmp_path: Path) -> None:
    with pytest.raises(LabPrerequisiteError, match="no Debian mirror for bookworm") as info:
        find_mirror("bookworm", apt_dir=tmp_path, environ={})
    assert MIRROR_ENV in str(info.value)
    assert info.value.exit_code == 2
