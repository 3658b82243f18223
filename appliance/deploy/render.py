"""The plan as desired state: what each host must end up with.

``desired_state`` turns a ``VerifiedBundle`` (only a verified bundle can get
here), the plan's engine command and an inventory host into a ``HostDesired``:
directories, release files with the digests they must have, the virtualenv
from bundled wheels, the rendered unit and environment files, where
``current`` points, and the unit's state. The dry run prints how far a host is
from it (``deploy.probe``), the engines converge hosts to it.

Templates live in ``playbooks/templates`` and are rendered here with one
strict Jinja2 environment (undefined variables are errors), so both engines
lay down byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

from appliance import package_data
from appliance.bundle.format import FILES_DIR, TARGETS_FILE
from appliance.bundle.payload import GATEWAY_WHEELS_DIR, WHEELS_DIR, WheelSet
from appliance.bundle.site.verify import VerifiedBundle
from appliance.deploy.host_desired import (
    HostDesired,
    ReleaseFile,
    RenderedFile,
    UnpackSpec,
    VenvSpec,
)
from appliance.deploy.host_layout import (
    CURRENT,
    GATEWAY_VENV,
    JAVA_ARTIFACT,
    JAVA_DIR,
    RELEASES,
    UNIT_NAME,
    release_etc,
)
from appliance.plan.engine_args import (
    HEALTH_PATHS,
    STOP_TIMEOUT_S,
    NodeCommand,
    argv_served_model,
    argv_value,
    start_timeout,
)
from appliance.plan.inventory import HostEntry

TEMPLATES = package_data.TEMPLATES_DIR  # in the package: an installed wheel has them too


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


def wheels_digest(wheels: WheelSet, digests: dict[str, str]) -> str:
    """What a venv is built from: its requirements, no-deps wheels and every wheel's SHA-256."""
    data = {
        "requirements": list(wheels.requirements),
        "no_deps": list(wheels.no_deps),
        "wheels": sorted(digests.get(path, "?") for path in wheels.files),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def model_bytes(verified: VerifiedBundle) -> int:
    """Bytes of the bundle's model (a file, or every file of its directory)."""
    model = verified.payload.model
    if model is None:
        return 0
    reused = verified.payload.reuses.files if verified.payload.reuses is not None else []
    files = [(r.path, r.length) for r in verified.records] + [(r.path, r.length) for r in reused]
    return sum(
        length for path, length in files if path == model.path or path.startswith(model.path + "/")
    )


# A worker's ExecStartPre: wait, bounded by a deadline (argv[3] seconds), until the group
# head's master port (torch.distributed's rendezvous store) accepts a connection; exit 1 with
# a reason if it never does. Run by the release venv's python. No `%` or `$` (systemd expands
# them on Exec lines).
HEAD_WAIT_CODE = (
    "import socket, sys, time; socket.setdefaulttimeout(2); "
    "host, port, end = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3]); "
    "up = lambda: socket.socket().connect_ex((host, port)) == 0; "
    "sys.exit(0 if any(up() or time.sleep(2) for _ in iter(lambda: time.monotonic() < end, False)) "
    'else "the group head " + host + ":" + str(port) + " did not open its master port in time")'
)


def _group_variables(command: NodeCommand, release_dir: str, start_timeout: int) -> dict[str, Any]:
    """A multi-node member's part of the unit: what it says about its group, and (a worker)
    the wait for the head's master port before it starts."""
    if command.role == "single":
        return {"group": None}
    addr = argv_value(command.argv, "--master-addr") or "?"
    port = argv_value(command.argv, "--master-port") or "?"
    wait = ""
    if command.role == "worker":
        wait = shlex.join(
            [f"{release_dir}/venv/bin/python", "-c", HEAD_WAIT_CODE, addr, port, str(start_timeout)]
        )
    return {
        "group": {
            "name": command.group or "none",
            "role": command.role,
            "rank": command.rank,
            "nodes": argv_value(command.argv, "--nnodes") or "?",
            "master": f"{addr}:{port}",
            "wait_for_head": wait,
            # the wait, then the start of the server (Type=simple: started once it runs)
            "start_sec": start_timeout + 60,
        }
    }


def model_unit_variables(
    command: NodeCommand,
    *,
    engine: str,
    version: int,
    bundle_name: str,
    content_digest: str,
    model_name: str,
    model_bytes: int,
) -> dict[str, Any]:
    """The model-server unit's template variables for one release of a bundle.

    Pure: no bundle needed, so the reference units (tests/golden/units) are rendered from a
    plan alone. ``desired_state`` calls it with the verified bundle's values.
    """
    release_dir = f"{RELEASES}/{version}"
    etc = release_etc(version)
    timeout = start_timeout(engine, model_bytes)
    return {
        "release_version": version,
        "bundle_name": bundle_name,
        "content_digest": content_digest[:16],
        "engine": engine,
        "model_name": model_name,
        "env_file": f"{etc}/model-server.env",
        "exec_start": _exec_start(command, release_dir),
        "release_dir": release_dir,
        "env_lines": "\n".join(f"{k}={v}" for k, v in sorted(command.env.items())),
        "served_model": argv_served_model(command.argv) or "none",
        # a group's worker serves no HTTP: the head answers for the group
        "health_paths": "none" if command.role == "worker" else " ".join(HEALTH_PATHS[engine]),
        "start_timeout": timeout,
        "stop_timeout": STOP_TIMEOUT_S[engine],
        **_group_variables(command, release_dir, timeout),
    }


def render_model_unit(variables: dict[str, Any]) -> tuple[str, str]:
    """The model-server unit and its environment file, from ``model_unit_variables``."""
    return (
        render("appliance-model.service.j2", variables),
        render("model-server.env.j2", variables),
    )


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
    # An adapter-only bundle's base files: taken over from the release in place, by digest.
    if verified.payload.reuses is not None:
        files += tuple(
            ReleaseFile(f"{release_dir}/{FILES_DIR}/{r.path}", None, r.length, r.sha256)
            for r in verified.payload.reuses.files
        )
    # The manifest's length and digest are those of the bytes that passed verification, not a
    # second read of the file: a targets.json changed after verification fails the host's
    # `sha256sum -c` instead of being laid down.
    manifest = verified.manifest_bytes
    files += (
        ReleaseFile(
            f"{release_dir}/{TARGETS_FILE}", verified.directory / TARGETS_FILE, len(manifest),
            hashlib.sha256(manifest).hexdigest(),
        ),
    )  # fmt: skip
    # The release is the bundle installed, whatever the site: every wheel set becomes its venv
    # (so a release laid down without --site can get the gateway later without being rewritten).
    digests = {r.path: r.sha256 for r in verified.records}
    if verified.payload.reuses is not None:
        digests |= {f.path: f.sha256 for f in verified.payload.reuses.files}
    venvs = tuple(
        VenvSpec(
            f"{release_dir}/{name}",
            f"{release_dir}/{FILES_DIR}/{wheels_dir}",
            tuple(wheels.requirements),
            tuple(f"{release_dir}/{FILES_DIR}/{w}" for w in wheels.no_deps),
            wheels_digest=wheels_digest(wheels, digests),
            reusable=verified.payload.reuses is not None,
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
    variables = model_unit_variables(
        command, engine=engine, version=verified.version, bundle_name=verified.name,
        content_digest=verified.content_digest, model_name=model.name if model else "none",
        model_bytes=model_bytes(verified),
    )  # fmt: skip
    unit, env_file = render_model_unit(variables)
    etc = release_etc(verified.version)
    rendered = (
        RenderedFile(f"{etc}/{UNIT_NAME}", "appliance-model.service.j2", unit),
        RenderedFile(f"{etc}/model-server.env", "model-server.env.j2", env_file),
    )
    return HostDesired(
        host, verified.version, release_dir, files, rendered, venvs, template_vars=variables,
        unpacks=unpacks,
    )  # fmt: skip
