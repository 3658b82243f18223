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

from appliance.bundle.format import FILES_DIR, TARGETS_FILE
from appliance.bundle.payload import GATEWAY_WHEELS_DIR, WHEELS_DIR
from appliance.bundle.verify import VerifiedBundle
from appliance.engine_args import NodeCommand
from appliance.inventory import HostEntry

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
RELEASE_ETC = f"{ETC}/releases"  # per release: its unit and environment, kept for rollback
DIRECTORIES = (ROOT, RELEASES, ETC, RELEASE_ETC, STATE, LOG)
GATEWAY_VENV = "gateway-venv"  # in the release, from the bundle's gateway wheels
TEMPLATES = Path(__file__).resolve().parents[2] / "playbooks" / "templates"


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


def checklist(desired: HostDesired) -> str:
    """``sha256sum -c`` input for the release files, relative to the release directory."""
    prefix = desired.release_dir + "/"
    return (
        "\n".join(f"{f.sha256}  {f.path.removeprefix(prefix)}" for f in desired.release_files)
        + "\n"
    )


def release_etc(version: int) -> str:
    return f"{RELEASE_ETC}/{version}"


def render(template: str, variables: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
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
        host, verified.version, release_dir, files, rendered, venvs, template_vars=variables
    )


# --- actual state --------------------------------------------------------------------


def _probed_files(desired: HostDesired) -> list[str]:
    paths = [f.path for f in desired.release_files] + [f.path for f in desired.rendered]
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
    for p in _probed_files(desired):
        lines.append(
            f'[ -f {q(p)} ] && echo "file${{t}}"{q(p)}"${{t}}$(sha256sum {q(p)} | cut -d" " -f1)"'
        )
    lines.append("true")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal[
        "create-dir", "put-file", "render", "venv", "activate", "firewall", "switch-current",
        "enable", "start",
    ]  # fmt: skip
    target: str
    detail: str


def diff(desired: HostDesired, actual: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    dirs = actual.get("dirs", {})
    changes += [Change("create-dir", d, "missing") for d in desired.directories if not dirs.get(d)]
    files = actual.get("files", {})
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


def parse_probe(output: str) -> dict[str, Any]:
    """The facts ``probe_script`` printed, as ``diff`` reads them."""
    state: dict[str, Any] = {"current": "", "nft": False, "units": {}, "venvs": {}, "dirs": {},
                             "files": {}}  # fmt: skip
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        fields = rest.split("\t")
        if kind == "current":
            state["current"] = fields[-1]
        elif kind == "nft":
            state["nft"] = fields[-1] == "true"
        elif kind == "unit" and len(fields) == 3:
            state["units"][fields[0]] = {"enabled": fields[1], "active": fields[2]}
        elif kind in ("venv", "dir"):
            state[kind + "s"][fields[0]] = True
        elif kind == "file" and len(fields) == 2:
            state["files"][fields[0]] = fields[1]
    return state
