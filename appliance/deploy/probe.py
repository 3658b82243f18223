"""How far a host is from its desired state: the probe script, its parser and the diff.

``probe_script`` is a read-only shell script that reports a host's actual
state, one fact per line; ``parse_probe`` reads it; ``diff`` compares it with
the ``HostDesired``. The dry run prints that diff, the engines converge hosts
to it, and the parity test reads hosts through the same probe, independently
of either engine. ``release_damage`` says why a release on the host differs
from what was installed; ``disk_shortfall`` whether the release's filesystem
has room for it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Literal

from appliance.deploy.host_desired import HostDesired
from appliance.deploy.host_layout import (
    CURRENT,
    NFT_TABLE,
    RELEASES,
    RULESET_PATH,
    active_unit_path,
)
from appliance.deploy.integrity import check_command, parse_integrity
from appliance.deploy.staging import staging_dir


def _probed_files(desired: HostDesired) -> list[str]:
    paths = [f.path for f in desired.release_files] + [f.path for f in desired.rendered]
    paths += [f.path for f in desired.secret_files]
    paths += [active_unit_path(u) for u in (*desired.units, *desired.boot_units)]
    if desired.firewall is not None:
        paths.append(RULESET_PATH)
    return paths


def probe_script(desired: HostDesired) -> str:
    """A read-only POSIX shell script printing the host's state, one fact per line.

    Lines are ``KIND<TAB>NAME<TAB>VALUE...`` (``parse_probe`` reads them): paths
    and unit names never hold a tab or a newline.
    """
    q = shlex.quote
    lines = [
        "set -u",
        "t=$(printf '\\t')",
        f'echo "current${{t}}-${{t}}$(readlink {CURRENT} 2>/dev/null)"',
        f'echo "nft${{t}}-${{t}}$(nft list table {NFT_TABLE} >/dev/null 2>&1 && echo true || echo false)"',
    ]
    for u in (*desired.units, *desired.boot_units):
        lines.append(
            f'echo "unit${{t}}{u}${{t}}$(systemctl is-enabled {q(u)} 2>/dev/null)'
            f'${{t}}$(systemctl is-active {q(u)} 2>/dev/null)"'
        )
    for v in desired.venvs:
        lines.append(f'[ -x {q(v.path)}/bin/python ] && echo "venv${{t}}"{q(v.path)}')
    for d in desired.directories:
        lines.append(f'[ -d {q(d)} ] && echo "dir${{t}}"{q(d)}')
    for user in desired.users:
        lines.append(f'getent passwd {q(user.name)} >/dev/null && echo "user${{t}}"{q(user.name)}')
    for path in [o.path for o in desired.owned_dirs] + [f.path for f in desired.secret_files]:
        lines.append(
            f'[ -e {q(path)} ] && echo "owner${{t}}"{q(path)}"${{t}}$(stat -c "%U %a" {q(path)})"'
        )
    for marker in [u.path for u in desired.unpacks] + [d.marker for d in desired.dists]:
        lines.append(f'[ -e {q(marker)} ] && echo "unpacked${{t}}"{q(marker)}')
    for p in _probed_files(desired):
        lines.append(
            f'[ -f {q(p)} ] && echo "file${{t}}"{q(p)}"${{t}}$(sha256sum {q(p)} | cut -d" " -f1)"'
        )
    # The release, if there: checked against its install record (venvs included), so a
    # tampered release is a change to make (``diff``), not a surprise for the engine.
    release = q(desired.release_dir)
    lines.append(
        f'if [ -d {release} ]; then echo "release${{t}}-${{t}}present"; '
        f'{check_command([desired.release_dir])} || echo "integrity${{t}}"{release}"${{t}}check failed"; fi'
    )
    # Where the release will be staged: its filesystem's free bytes, and what is staged already.
    lines.append(
        f'd={q(RELEASES)}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; '
        "echo \"disk${t}$d${t}$(df -P -B1 \"$d\" | tail -n 1 | tr -s ' ' '\\t')\""
    )
    staging = q(staging_dir(desired))
    lines.append(f'[ -d {staging} ] && echo "staged${{t}}-${{t}}$(du -sb {staging} | cut -f1)"')
    lines.append("true")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal[
        "create-dir", "put-file", "link-file", "render", "venv", "activate", "firewall",
        "switch-current", "enable", "start", "user", "unpack", "put-secret", "reinstall",
    ]  # fmt: skip
    target: str
    detail: str


def diff(desired: HostDesired, actual: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    dirs = actual.get("dirs", {})
    changes += [Change("create-dir", d, "missing") for d in desired.directories if not dirs.get(d)]
    users = actual.get("users", {})
    changes += [
        Change("user", u.name, "missing system user")
        for u in desired.users
        if not users.get(u.name)
    ]
    owners = actual.get("owners", {})
    for o in desired.owned_dirs:
        if owners.get(o.path) != f"{o.owner} {o.mode:o}":
            changes.append(
                Change(
                    "create-dir",
                    o.path,
                    f"{o.owner}, {o.mode:04o}: found {owners.get(o.path) or 'missing'}",
                )
            )
    files = actual.get("files", {})
    if (tampered := release_damage(desired, actual)) is not None:
        changes.append(Change("reinstall", desired.release_dir, tampered))
    for f in desired.release_files:
        found = files.get(f.path, "")
        if found != f.sha256:
            state = "missing" if not found else f"digest {found[:12]}... != {f.sha256[:12]}..."
            if f.reused:  # an adapter-only release: linked from the release in place, by digest
                changes.append(Change("link-file", f.path, f"{state}; from the release in place"))
            else:
                changes.append(Change("put-file", f.path, state))
    for r in desired.rendered:
        found = files.get(r.path, "")
        if found != r.sha256:
            changes.append(Change("render", r.path, "missing" if not found else "content differs"))
    venvs = actual.get("venvs", {})
    for v in desired.venvs:
        if not venvs.get(v.path):
            changes.append(Change("venv", v.path, f"create offline from {v.wheels_dir}"))
    unpacked = actual.get("unpacked", {})
    for u in desired.unpacks:
        if not unpacked.get(u.path):
            changes.append(Change("unpack", u.path, f"from {u.archive}"))
    for d in desired.dists:
        if not unpacked.get(d.marker):
            changes.append(Change("unpack", d.path, f"from {d.archive}"))
    for s in desired.secret_files:
        found, owner = files.get(s.path, ""), owners.get(s.path, "")
        if found != s.sha256 or owner != f"{s.owner} {s.mode:o}":
            what = (
                "missing"
                if not found
                else "content differs"
                if found != s.sha256
                else f"found {owner}"
            )
            changes.append(
                Change("put-secret", s.path, f"{what} (from {s.source}, {s.owner}, {s.mode:04o})")
            )
    for unit in (*desired.units, *desired.boot_units):
        path = active_unit_path(unit)
        if files.get(path, "") != desired.unit_file_of(unit).sha256:
            changes.append(Change("activate", path, f"release {desired.version}'s unit"))
    if desired.firewall is not None and (
        files.get(RULESET_PATH, "") != desired.firewall.sha256 or not actual.get("nft")
    ):
        what = "loaded" if files.get(RULESET_PATH) == desired.firewall.sha256 else "laid down"
        changes.append(
            Change("firewall", RULESET_PATH, f"release {desired.version}'s ruleset not {what}")
        )
    if actual.get("current") != desired.current_target:
        changes.append(
            Change(
                "switch-current",
                CURRENT,
                f"{actual.get('current') or '(none)'} -> {desired.current_target}",
            )
        )
    states = actual.get("units", {})
    for unit in (*desired.units, *desired.boot_units):
        enabled = states.get(unit, {}).get("enabled", "")
        if enabled != "enabled":
            changes.append(Change("enable", unit, enabled or "not installed"))
    for unit in desired.units:
        active = states.get(unit, {}).get("active", "")
        if active != "active":
            changes.append(Change("start", unit, active or "inactive"))
    return changes


def release_damage(desired: HostDesired, actual: dict[str, Any]) -> str | None:
    """Why the release on the host differs from what was installed (``None``: it does not, or
    it is not there). A release is never rewritten in place: the deploy moves a damaged one
    aside (the evidence) and stages it again from the verified bundle."""
    if not actual.get("release"):
        return None
    files = actual.get("files", {})
    problems = [
        f"{f.path.removeprefix(desired.release_dir + '/')}: "
        + ("missing" if not files.get(f.path) else "differs from the signed digest")
        for f in desired.release_files
        if files.get(f.path) != f.sha256
    ]
    integrity = actual.get("integrity", {})
    if desired.release_dir not in integrity:
        problems.append("its install record could not be checked (is python3 on the host?)")
    else:
        problems += [p for p in integrity[desired.release_dir] if p not in problems]
    if not problems:
        return None
    shown = "; ".join(problems[:5]) + (
        f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    return f"release {desired.version} differs from what was installed: {shown}"


# Free space a release needs beyond its files: the virtualenvs built from its wheels (unpacked,
# they take a few times the wheels' size) and room to spare for the install record and logs.
VENV_FACTOR = 3
HEADROOM = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DiskShortfall:
    mount: str
    filesystem: str
    needed: int
    free: int


def space_needed(desired: HostDesired, actual: dict[str, Any]) -> int:
    """Bytes the release still needs on its filesystem (0 when it is in place and intact)."""
    if actual.get("release") and release_damage(desired, actual) is None:
        return 0
    # Reused files (adapter-only bundles) are hard links into the release in place: no space.
    files = sum(f.length for f in desired.uploaded)
    wheels = sum(
        f.length
        for f in desired.release_files
        for v in desired.venvs
        if f.path.startswith(v.wheels_dir + "/")
    )
    staged = min(int(actual.get("staged") or 0), files)
    return files - staged + VENV_FACTOR * wheels + HEADROOM


def disk_shortfall(desired: HostDesired, actual: dict[str, Any]) -> DiskShortfall | None:
    """The release's filesystem when it has less free space than the release needs."""
    disk = actual.get("disk")
    needed = space_needed(desired, actual)
    if not needed or not disk or disk["free"] >= needed:
        return None
    return DiskShortfall(disk["mount"], disk["filesystem"], needed, disk["free"])


def parse_probe(output: str) -> dict[str, Any]:
    """The facts ``probe_script`` printed, as ``diff`` reads them."""
    state: dict[str, Any] = {"current": "", "nft": False, "units": {}, "venvs": {}, "dirs": {},
                             "files": {}, "users": {}, "owners": {}, "unpacked": {},
                             "release": False, "disk": None, "staged": 0}  # fmt: skip
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        fields = rest.split("\t")
        if kind == "current":
            state["current"] = fields[-1]
        elif kind == "nft":
            state["nft"] = fields[-1] == "true"
        elif kind == "unit" and len(fields) == 3:
            state["units"][fields[0]] = {"enabled": fields[1], "active": fields[2]}
        elif kind in ("venv", "dir", "user"):
            state[kind + "s"][fields[0]] = True
        elif kind == "unpacked":
            state["unpacked"][fields[0]] = True
        elif kind == "owner" and len(fields) == 2:
            state["owners"][fields[0]] = fields[1]
        elif kind == "file" and len(fields) == 2:
            state["files"][fields[0]] = fields[1]
        elif kind == "release":
            state["release"] = True
        elif kind == "disk" and len(fields) >= 7 and fields[4].isdigit():
            # df -P: filesystem, size, used, available, capacity, mount point (may hold blanks)
            state["disk"] = {"path": fields[0], "filesystem": fields[1], "free": int(fields[4]),
                             "mount": " ".join(fields[6:])}  # fmt: skip
        elif kind == "staged" and len(fields) == 2 and fields[1].isdigit():
            state["staged"] = int(fields[1])
    state["integrity"] = parse_integrity(output)
    return state
