"""Which Debian mirror the lab's root filesystem is built from: the machine's own apt sources.

A probe (read ``/etc/apt/sources.list`` and ``sources.list.d/*.list|*.sources``
as apt does) and pure parsers of both formats (one-line and deb822). No host
is hardcoded: the machine already knows a mirror it may reach. Choice order:
``APPLIANCE_LAB_MIRROR`` if set; a ``deb`` source for the wanted suite with
the ``main`` component; else a plain Debian release source (no ``-updates``
or ``-security`` suite) with ``main``, which serves every release.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.lab.errors import LabPrerequisiteError

MIRROR_ENV = "APPLIANCE_LAB_MIRROR"
_SCHEMES = ("http://", "https://", "file:/")


@dataclass(frozen=True, slots=True)
class AptSource:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    enabled: bool = True


def parse_deb822(text: str) -> list[AptSource]:
    """Stanzas of a ``.sources`` file (deb822: ``Field: value``, blank lines between stanzas)."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last: str | None = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and last is not None:
                fields[last] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            last = key.strip().lower()
            fields[last] = value.strip()
        if "uris" not in fields:
            continue
        sources.append(
            AptSource(
                types=tuple(fields.get("types", "").split()),
                uris=tuple(fields["uris"].split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
                enabled=fields.get("enabled", "yes").lower() not in ("no", "false", "0"),
            )
        )
    return sources


def parse_one_line(text: str) -> list[AptSource]:
    """Lines of a ``sources.list`` file: ``deb [options] URI SUITE COMPONENT...``."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        sources.append(
            AptSource(
                types=(words[0],), uris=(words[1],), suites=(words[2],), components=tuple(words[3:])
            )
        )
    return sources


def choose_mirror(sources: list[AptSource], suite: str) -> str | None:
    """The mirror URI to debootstrap ``suite`` from, or None if no source fits."""
    usable = [s for s in sources if s.enabled and "deb" in s.types and "main" in s.components]

    def first_uri(candidates: list[AptSource]) -> str | None:
        for source in candidates:
            for uri in source.uris:
                if uri.startswith(_SCHEMES):
                    return uri.rstrip("/")
        return None

    exact = first_uri([s for s in usable if suite in s.suites])
    if exact is not None:
        return exact
    return first_uri(
        [
            s
            for s in usable
            if any("-" not in x and "/" not in x for x in s.suites)
            and not any("security" in u for u in s.uris)
        ]
    )


def read_apt_sources(apt_dir: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every source apt itself would read (files with other suffixes are ignored, as by apt)."""
    sources: list[AptSource] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        sources += parse_one_line(main_list.read_text(errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                sources += parse_deb822(path.read_text(errors="replace"))
    return sources


def find_mirror(
    suite: str, *, apt_dir: Path = Path("/etc/apt"), environ: Mapping[str, str] | None = None
) -> str:
    """The Debian mirror for ``suite``: the environment override, else the apt sources."""
    env = os.environ if environ is None else environ
    override = env.get(MIRROR_ENV, "").strip()
    if override:
        return override.rstrip("/")
    mirror = choose_mirror(read_apt_sources(apt_dir), suite)
    if mirror is None:
        raise LabPrerequisiteError(
            f"no Debian mirror for {suite} (with component main) in {apt_dir}/sources.list or "
            f"{apt_dir}/sources.list.d/",
            hint=f"Set {MIRROR_ENV}=URL to a Debian mirror this machine can reach.",
        )
    return mirror
