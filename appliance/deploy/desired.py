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
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance.bundle.format import FILES_DIR, TARGETS_FILE
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
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"  # the active unit: a copy of one release's unit
RELEASE_ETC = f"{ETC}/releases"  # per release: its unit and environment, kept for rollback
DIRECTORIES = (ROOT, RELEASES, ETC, RELEASE_ETC, STATE, LOG)
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


@dataclass(frozen=True)
class HostDesired:
    host: HostEntry
    version: int
    release_dir: str
    release_files: tuple[ReleaseFile, ...]
    rendered: tuple[RenderedFile, ...]
    venv: VenvSpec | None
    unit: str = UNIT_NAME
    directories: tuple[str, ...] = DIRECTORIES
    template_vars: dict[str, Any] = field(default_factory=dict)

    @property
    def current_target(self) -> str:
        return self.release_dir

    @property
    def unit_file(self) -> RenderedFile:
        return next(r for r in self.rendered if r.path.endswith(self.unit))


@dataclass(frozen=True, slots=True)
class HostOutcome:
    """What an engine reports per host after converging."""

    name: str
    ok: bool
    changed: bool
    message: str


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
    wheels = verified.payload.wheels
    venv = None
    if wheels is not None:
        venv = VenvSpec(
            f"{release_dir}/venv", f"{release_dir}/{FILES_DIR}/wheels", tuple(wheels.requirements)
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
        host, verified.version, release_dir, files, rendered, venv, template_vars=variables
    )


# --- actual state --------------------------------------------------------------------


def probe_script(desired: HostDesired) -> str:
    """A read-only POSIX shell script printing the host's state as one JSON object."""
    paths = (
        [f.path for f in desired.release_files] + [f.path for f in desired.rendered] + [UNIT_PATH]
    )
    lines = [
        "set -u",
        'printf "{"',
        f'printf \'"current": "%s", \' "$(readlink {CURRENT} 2>/dev/null)"',
        f'printf \'"enabled": "%s", \' "$(systemctl is-enabled {desired.unit} 2>/dev/null)"',
        f'printf \'"active": "%s", \' "$(systemctl is-active {desired.unit} 2>/dev/null)"',
        f'printf \'"venv": %s, \' "$([ -x {shlex.quote(desired.venv.path)}/bin/python ] && echo true || echo false)"'
        if desired.venv
        else "printf '\"venv\": false, '",
        "printf '\"dirs\": {'",
    ]
    for i, d in enumerate(desired.directories):
        sep = ", " if i < len(desired.directories) - 1 else ""
        lines.append(
            f'printf \'"%s": %s{sep}\' {shlex.quote(d)} "$([ -d {shlex.quote(d)} ] && echo true || echo false)"'
        )
    lines.append("printf '}, \"files\": {'")
    for i, p in enumerate(paths):
        sep = ", " if i < len(paths) - 1 else ""
        q = shlex.quote(p)
        lines.append(
            f'printf \'"%s": "%s"{sep}\' {q} "$([ -f {q} ] && sha256sum {q} | cut -d" " -f1)"'
        )
    lines.append("printf '}}\\n'")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal[
        "create-dir", "put-file", "render", "venv", "activate", "switch-current", "enable", "start"
    ]
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
    if desired.venv is not None and not actual.get("venv"):
        changes.append(
            Change("venv", desired.venv.path, f"create offline from {desired.venv.wheels_dir}")
        )
    if files.get(UNIT_PATH, "") != desired.unit_file.sha256:
        changes.append(Change("activate", UNIT_PATH, f"release {desired.version}'s unit"))
    if actual.get("current") != desired.current_target:
        changes.append(
            Change(
                "switch-current",
                CURRENT,
                f"{actual.get('current') or '(none)'} -> {desired.current_target}",
            )
        )
    if actual.get("enabled") != "enabled":
        changes.append(Change("enable", desired.unit, actual.get("enabled") or "not installed"))
    if actual.get("active") != "active":
        changes.append(Change("start", desired.unit, actual.get("active") or "inactive"))
    return changes


def parse_probe(output: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return data
