"""The plan as desired state: what each host must end up with, and how far it is from it.

``desired_state`` turns a ``VerifiedBundle`` (only a verified bundle can get
here), the plan's engine command and an inventory host into a ``HostDesired``:
directories, release files with the digests they must have, the virtualenv
from bundled wheels, the rendered unit and environment files, where
``current`` points, and the unit's state. ``probe_script`` is a read-only
shell script that reports a host's actual state as JSON; ``diff`` compares
the two. The dry run prints that diff, the engines converge hosts to it, and
the parity test reads hosts through the same probe, independently of either
engine.

Templates live in ``playbooks/templates`` and are rendered here with one
strict Jinja2 environment (undefined variables are errors), so both engines
lay down byte-identical files.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance import package_data
from appliance.bundle.format import FILES_DIR, TARGETS_FILE
from appliance.bundle.payload import GATEWAY_WHEELS_DIR, WHEELS_DIR
from appliance.bundle.site.verify import VerifiedBundle
from appliance.deploy.integrity import check_command, parse_integrity, record_command
from appliance.plan.engine_args import NodeCommand
from appliance.plan.inventory import HostEntry

ROOT = "/opt/appliance"
RELEASES = f"{ROOT}/releases"
CURRENT = f"{ROOT}/current"
ETC = "/etc/appliance"
STATE = "/var/lib/appliance"
LOG = "/var/log/appliance"
UNIT_NAME = "appliance-model.service"
SYSTEMD_DIR = "/etc/systemd/system"
UNIT_PATH = f"{SYSTEMD_DIR}/{UNIT_NAME}"  # the active unit: a copy of one release's unit
# The firewall: the active ruleset (a copy of one release's) and the unit loading it at boot.
RULESET_PATH = f"{ETC}/nftables.nft"  # = appliance.netpolicy.nftables.RULESET_PATH
NFT_TABLE = "inet appliance"
NFT_BOOT_UNIT = "appliance-nftables.service"
GATEWAY_UNIT = "appliance-gateway.service"  # with --site (deploy/gateway_layer.py)
# With sso.install in the site file (deploy/keycloak_layer.py):
KEYCLOAK_UNIT = "appliance-keycloak.service"
JAVA_ARTIFACT = "java-runtime"  # a bundle artifact unpacked into every release that carries it
JAVA_DIR = "runtime/java"  # in the release: JAVA_HOME of the services that need Java
# Written last into a distribution unpacked outside a release (DistSpec):
UNPACKED_MARKER = ".appliance-unpacked"
RELEASE_ETC = f"{ETC}/releases"  # per release: its unit and environment, kept for rollback
DIRECTORIES = (ROOT, RELEASES, ETC, RELEASE_ETC, STATE, LOG)
GATEWAY_VENV = "gateway-venv"  # in the release, from the bundle's gateway wheels
TEMPLATES = package_data.TEMPLATES_DIR  # in the package: an installed wheel has them too


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    path: str  # absolute on the host
    source: Path  # the verified local copy
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class RenderedFile:
    path: str
    template: str
    content: str
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VenvSpec:
    path: str
    wheels_dir: str
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()  # wheel files installed after, without their dependencies


@dataclass(frozen=True, slots=True)
class UnpackSpec:
    """A signed archive of the release, unpacked into the release while it is staged."""

    archive: str  # absolute path on the host, in the release
    path: str  # absolute path on the host, in the release


@dataclass(frozen=True, slots=True)
class DistSpec:
    """A signed archive of the release unpacked outside it, once, because its program writes
    into its own tree (Keycloak's ``kc.sh build``): root-owned but for ``writable`` (relative
    directories handed to ``owner``). Unpacked beside ``path`` and renamed into place with its
    marker, so a half-unpacked tree is never taken for a whole one."""

    archive: str
    path: str
    owner: str
    writable: tuple[str, ...]
    # Of ``writable``, those only ``owner`` may enter (0700): a secret file put there is never
    # readable by others, not even while an engine uploads it before setting its mode.
    private: tuple[str, ...] = ()

    @property
    def marker(self) -> str:
        return f"{self.path}/{UNPACKED_MARKER}"


@dataclass(frozen=True, slots=True)
class SystemUser:
    """A system user and its group of the same name, no login, no home created."""

    name: str
    home: str
    shell: str = "/usr/sbin/nologin"


@dataclass(frozen=True, slots=True)
class OwnedDir:
    path: str
    owner: str  # user and group
    mode: int


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A file holding secrets, uploaded from a private local file: never rendered, never in
    the engines' variables or logs; ``sha256`` (of secrets of 256 bits) tells nothing."""

    path: str
    source: Path  # 0600 on this machine (appliance.keycloak.site_secrets)
    sha256: str
    owner: str = "root"
    mode: int = 0o600


@dataclass(frozen=True)
class HostDesired:
    host: HostEntry
    version: int
    release_dir: str
    release_files: tuple[ReleaseFile, ...]
    rendered: tuple[RenderedFile, ...]
    venvs: tuple[VenvSpec, ...]
    # Services that must be enabled and running (each a rendered unit of the release), in start order.
    units: tuple[str, ...] = (UNIT_NAME,)
    # Units enabled for boot but never started by a deploy (the firewall loader).
    boot_units: tuple[str, ...] = ()
    firewall: RenderedFile | None = None  # the release's nftables ruleset (host rulesets)
    gateway_port: int | None = None  # the gateway's TLS port, when the release has one
    directories: tuple[str, ...] = DIRECTORIES
    template_vars: dict[str, Any] = field(default_factory=dict)
    unpacks: tuple[UnpackSpec, ...] = ()  # into the release while staged (the Java runtime)
    # Keycloak (deploy/keycloak_layer.py): its user, directories, distribution and secrets.
    users: tuple[SystemUser, ...] = ()
    owned_dirs: tuple[OwnedDir, ...] = ()
    dists: tuple[DistSpec, ...] = ()
    secret_files: tuple[SecretFile, ...] = ()
    keycloak_health: str | None = None  # Keycloak's readiness URL on the host's loopback
    # Where a Keycloak laid down here is reached and where its secrets are (paths, never values).
    keycloak: dict[str, str] | None = None

    @property
    def current_target(self) -> str:
        return self.release_dir

    @property
    def unit(self) -> str:
        return UNIT_NAME

    @property
    def unit_file(self) -> RenderedFile:
        return self.unit_file_of(UNIT_NAME)

    def unit_file_of(self, unit: str) -> RenderedFile:
        return next(r for r in self.rendered if r.path.endswith("/" + unit))


def active_unit_path(unit: str) -> str:
    """Where the active copy of one release's ``unit`` is."""
    return f"{SYSTEMD_DIR}/{unit}"


@dataclass(frozen=True, slots=True)
class HostOutcome:
    """What an engine reports per host after converging."""

    name: str
    ok: bool
    changed: bool
    message: str


def venv_command(spec: VenvSpec, release_dir: str, staging: str) -> str:
    """Shell creating ``spec``'s virtualenv offline, inside the release's staging directory.

    Requirements from the bundled wheels only; then the ``no_deps`` wheels
    without their dependencies (the appliance wheel of the gateway: its own
    dependencies are the CLI's, not the gateway's).
    """

    def staged(path: str) -> str:
        return shlex.quote(staging + path.removeprefix(release_dir))

    venv, wheels = staged(spec.path), staged(spec.wheels_dir)
    pip = f"PIP_NO_INDEX=1 {venv}/bin/pip install --quiet --no-index"
    command = f"rm -rf {venv} && python3 -m venv {venv}"
    if spec.requirements:
        reqs = " ".join(shlex.quote(r) for r in spec.requirements)
        command += f" && {pip} --find-links {wheels} {reqs}"
    if spec.no_deps:
        command += f" && {pip} --no-deps {' '.join(staged(w) for w in spec.no_deps)}"
    return command


def unpack_argv(archive: str, destination: str) -> tuple[str, ...]:
    """GNU tar arguments unpacking a signed distribution archive into ``destination``.

    The archive's bytes are verified (signed SHA-256) before this runs; tar still
    gets no chance to restore owners or modes, and the top directory is stripped.
    """
    return (
        "tar", "--extract", "--gzip", "--file", archive, "--directory", destination,
        "--strip-components=1", "--no-same-owner", "--no-same-permissions",
        "--no-overwrite-dir", "--delay-directory-restore",
    )  # fmt: skip


def staging_commands(desired: HostDesired, staging: str) -> list[str]:
    """Shell run in the release's staging directory after its files are checked: the
    virtualenvs, then the archives unpacked into the release. Both engines run these very
    commands (one each; each starts with ``rm -rf <what it makes>``, so a rerun starts clean)."""
    commands = [venv_command(spec, desired.release_dir, staging) for spec in desired.venvs]
    for spec in desired.unpacks:
        archive = staging + spec.archive.removeprefix(desired.release_dir)
        path = staging + spec.path.removeprefix(desired.release_dir)
        commands.append(
            f"rm -rf {shlex.quote(path)} && mkdir -p {shlex.quote(path)} && "
            + shlex.join(unpack_argv(archive, path))
        )
    return commands


def staging_command(desired: HostDesired, staging: str) -> str:
    """``staging_commands`` as one shell command running them side by side (the two venvs
    take about as long together as the larger alone); it fails, with the tail of each failed
    step's output, if any of them fails. Then, whatever the release holds, the install record
    of the whole staging directory (``integrity.record_command``): the last write before the
    release is made read-only, so what was built on the host is checked like the rest."""
    record = record_command(staging)
    commands = staging_commands(desired, staging)
    if not commands:
        return record
    lines = ["logs=$(mktemp -d)"]
    for i, command in enumerate(commands):
        lines.append(f'( {command} ) >"$logs/{i}" 2>&1 & pid{i}=$!')
    lines.append("failed=0")
    for i in range(len(commands)):
        lines.append(
            f'wait $pid{i} || {{ failed=1; echo "staging step {i + 1} of {len(commands)} failed:" >&2; '
            f'tail -n 20 "$logs/{i}" >&2; }}'
        )
    lines.append('rm -rf "$logs"')
    lines.append(f'[ "$failed" = 0 ] && {record}')
    return "\n".join(lines)


def dist_command(spec: DistSpec) -> str:
    """Shell unpacking ``spec`` beside its place and renaming it there; nothing if done."""
    q = shlex.quote
    partial = f"{spec.path}.partial"
    writable = " ".join(q(f"{partial}/{w}") for w in spec.writable)
    private = "".join(f"chmod 0700 {q(f'{partial}/{p}')} && " for p in spec.private)
    return (
        f"[ -e {q(spec.marker)} ] && exit 0; "
        f"rm -rf {q(partial)} && mkdir -p {q(partial)} && "
        f"{shlex.join(unpack_argv(spec.archive, partial))} && "
        f"mkdir -p {writable} && chown -R {q(spec.owner)}:{q(spec.owner)} {writable} && "
        f"{private}touch {q(partial + '/' + UNPACKED_MARKER)} && rm -rf {q(spec.path)} && "
        f"mv -T {q(partial)} {q(spec.path)}"
    )


def checklist(desired: HostDesired) -> str:
    """``sha256sum -c`` input for the release files, relative to the release directory."""
    prefix = desired.release_dir + "/"
    return (
        "\n".join(f"{f.sha256}  {f.path.removeprefix(prefix)}" for f in desired.release_files)
        + "\n"
    )


def staging_dir(desired: HostDesired) -> str:
    """Where both engines stage release ``desired.version`` before it is moved into place."""
    return f"{RELEASES}/.staging-{desired.version}"


def release_etc(version: int) -> str:
    return f"{RELEASE_ETC}/{version}"


def render(template: str, variables: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(package_data.require(TEMPLATES, "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # systemd units and env files, not HTML
    )
    return env.get_template(template).render(**variables)


def _exec_start(command: NodeCommand, release_dir: str) -> str:
    # The plan's command refers to the moving `current` link; the unit runs one fixed release.
    argv = [part.replace(CURRENT, release_dir) for part in command.argv]
    return shlex.join(argv)


def desired_state(
    verified: VerifiedBundle, command: NodeCommand, host: HostEntry, *, engine: str
) -> HostDesired:
    release_dir = f"{RELEASES}/{verified.version}"
    files = tuple(
        ReleaseFile(
            f"{release_dir}/{FILES_DIR}/{r.path}", verified.files_dir / r.path, r.length, r.sha256
        )
        for r in verified.records
    )
    manifest = verified.directory / TARGETS_FILE
    files += (
        ReleaseFile(
            f"{release_dir}/{TARGETS_FILE}", manifest, manifest.stat().st_size,
            hashlib.sha256(manifest.read_bytes()).hexdigest(),
        ),
    )  # fmt: skip
    # The release is the bundle installed, whatever the site: every wheel set becomes its venv
    # (so a release laid down without --site can get the gateway later without being rewritten).
    venvs = tuple(
        VenvSpec(
            f"{release_dir}/{name}",
            f"{release_dir}/{FILES_DIR}/{wheels_dir}",
            tuple(wheels.requirements),
            tuple(f"{release_dir}/{FILES_DIR}/{w}" for w in wheels.no_deps),
        )
        for name, wheels_dir, wheels in (
            ("venv", WHEELS_DIR, verified.payload.wheels),
            (GATEWAY_VENV, GATEWAY_WHEELS_DIR, verified.payload.gateway),
        )
        if wheels is not None
    )
    # A Java runtime in the bundle is unpacked into the release (read-only, like the venvs).
    unpacks = tuple(
        UnpackSpec(f"{release_dir}/{FILES_DIR}/{a.path}", f"{release_dir}/{JAVA_DIR}")
        for a in verified.payload.artifacts
        if a.name == JAVA_ARTIFACT and a.path.endswith(".tar.gz")
    )
    model = verified.payload.model
    etc = release_etc(verified.version)
    variables: dict[str, Any] = {
        "release_version": verified.version,
        "bundle_name": verified.name,
        "content_digest": verified.content_digest[:16],
        "engine": engine,
        "model_name": model.name if model is not None else "none",
        "env_file": f"{etc}/model-server.env",
        "exec_start": _exec_start(command, release_dir),
        "release_dir": release_dir,
        "env_lines": "\n".join(f"{k}={v}" for k, v in sorted(command.env.items())),
    }
    unit = render("appliance-model.service.j2", variables)
    rendered = (
        RenderedFile(f"{etc}/{UNIT_NAME}", "appliance-model.service.j2", unit),
        RenderedFile(
            f"{etc}/model-server.env",
            "model-server.env.j2",
            render("model-server.env.j2", variables),
        ),
    )
    return HostDesired(
        host, verified.version, release_dir, files, rendered, venvs, template_vars=variables,
        unpacks=unpacks,
    )  # fmt: skip


# --- actual state --------------------------------------------------------------------


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
    # tampered release is a change to make (desired.diff), not a surprise for the engine.
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
        "create-dir", "put-file", "render", "venv", "activate", "firewall", "switch-current",
        "enable", "start", "user", "unpack", "put-secret", "reinstall",
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
            changes.append(
                Change(
                    "put-file",
                    f.path,
                    "missing" if not found else f"digest {found[:12]}... != {f.sha256[:12]}...",
                )
            )
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
    files = sum(f.length for f in desired.release_files)
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
