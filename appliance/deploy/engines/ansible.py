"""The Ansible engine: converge hosts to their ``HostDesired`` by running ``playbooks/deploy.yml``.

It lays down exactly what the pyinfra engine does (directories, the release
through ``releases/.staging-<v>/`` with ``sha256sum -c``, the offline
virtualenv, read-only and ``mv -T`` into place; the release's unit and
environment files rendered from the same templates), so the hosts end up
byte-identical whichever engine ran. Activation, health and ``current`` stay
the deploy's (``deploy.activation``).

Per run, a private directory (removed afterwards) holds what ansible-runner
and plain ``ansible-playbook`` need:

- ``inventory/hosts.ini``: ``appliance.plan.inventory.ansible_ini`` of the plans'
  hosts (host keys checked strictly against the inventory's known_hosts);
- ``inventory/host_vars/<host>.yml``: the plan of that host (release files
  with their local sources and signed digests, directories, venv, rendered
  files with the digests they must have, and the template variables as
  top-level variables). The document is tagged ``!unsafe``: values are data,
  never templates, exactly as when ``deploy.render.render`` renders them;
- ``ansible.cfg``: pipelining, no fact gathering, one fork per host, SSH
  multiplexing, all temporary and state files inside the directory.

``emit_ansible`` (``deploy --emit-ansible``) writes them for plain
``ansible-playbook`` (see ``playbooks/README.md``). Nothing secret goes on a
command line: the inventory only names the key file. A failing host does not stop the others;
each one's outcome comes from the run's stats and failure events. Each
finished task is reported per host (``Progress("converge", host=...)``); a set
``cancel`` makes ansible-runner stop ansible-playbook (raising ``Cancelled``);
the next deploy resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

import yaml

from appliance import package_data
from appliance.deploy.host_desired import HostDesired, HostOutcome
from appliance.deploy.staging import checklist, dist_command, reuse_command, staging_command
from appliance.errors import Cancelled, DeploymentError, InputError
from appliance.events import Event, Progress, Warned
from appliance.plan.inventory import Inventory, ansible_ini

PLAYBOOKS = package_data.PLAYBOOKS_DIR  # in the package: an installed wheel has them too
PLAYBOOK = PLAYBOOKS / "deploy.yml"
RUN_TIMEOUT = 1800  # seconds for the whole run; a wedged host cannot hold a deploy forever
SSH_TIMEOUT = 10
# Names a template variable cannot take: the playbook's own, Ansible's, and those the template
# action sets itself (template_*) or the render loop uses (item).
_RESERVED_PREFIXES = ("ansible_", "appliance_", "template_")
_MAGIC = frozenset(
    ("environment", "group_names", "groups", "hostvars", "inventory_dir", "inventory_file",
     "inventory_hostname", "inventory_hostname_short", "item", "omit", "play_hosts",
     "playbook_dir", "role_name", "role_names", "role_path", "vars")
)  # fmt: skip

__all__ = [
    "PLAYBOOK",
    "HostOutcome",
    "RunFiles",
    "converge",
    "dump_host_vars",
    "host_outcome",
    "host_vars",
    "write_run_files",
]


def _staging(desired: HostDesired) -> str:
    return f"{desired.release_dir.rsplit('/', 1)[0]}/.staging-{desired.version}"


def _relative(desired: HostDesired, path: str) -> str:
    return path.removeprefix(desired.release_dir + "/")


def _check_template_vars(desired: HostDesired) -> None:
    from ansible.vars.reserved import is_reserved_name  # type: ignore[import-untyped]

    for name in desired.template_vars:
        reserved = name in _MAGIC or name.startswith(_RESERVED_PREFIXES) or is_reserved_name(name)
        if reserved or not name.isidentifier():
            raise DeploymentError(
                f"{desired.host.name}: template variable {name!r} cannot be an Ansible host variable",
                hint="Rename it in appliance.deploy.render: not ansible_*, appliance_*, template_* "
                "or a name Ansible reserves.",
            )


def host_vars(desired: HostDesired) -> dict[str, Any]:
    """The playbook's variables for one host (pure)."""
    _check_template_vars(desired)
    staging = _staging(desired)
    subdirs = {staging}
    for f in desired.release_files:
        parent = PurePosixPath(f"{staging}/{_relative(desired, f.path)}").parent
        while str(parent) != staging:
            subdirs.add(str(parent))
            parent = parent.parent
    data: dict[str, Any] = {
        "appliance_version": desired.version,
        "appliance_release_dir": desired.release_dir,
        "appliance_staging_dir": staging,
        "appliance_directories": list(desired.directories),
        "appliance_staging_directories": sorted(subdirs),
        "appliance_release_files": [
            {
                "src": str(f.source.absolute()),
                "dest": _relative(desired, f.path),
                "sha256": f.sha256,
            }
            for f in desired.release_files
            if f.source is not None
        ],
        # Adapter-only releases: the base files linked from the release in place (the same
        # shell as the pyinfra engine's, staging.reuse_command), then checked with the rest.
        "appliance_reuse_command": reuse_command(desired, staging),
        "appliance_checksums": checklist(desired),
        # The same shell the pyinfra engine runs (staging.staging_command): the same venvs and
        # unpacked runtimes.
        "appliance_staging_command": staging_command(desired, staging),
        "appliance_users": [
            {"name": u.name, "home": u.home, "shell": u.shell} for u in desired.users
        ],
        "appliance_owned_dirs": [
            {"path": o.path, "owner": o.owner, "mode": f"{o.mode:04o}"} for o in desired.owned_dirs
        ],
        "appliance_dists": [
            {"path": d.path, "marker": d.marker, "command": dist_command(d)} for d in desired.dists
        ],
        # Local private files (0600), copied as they are: no secret is a variable.
        "appliance_secret_files": [
            {
                "src": str(f.source.absolute()),
                "path": f.path,
                "owner": f.owner,
                "mode": f"{f.mode:04o}",
                "sha256": f.sha256,
            }
            for f in desired.secret_files
        ],
        "appliance_rendered": [
            {"path": r.path, "template": r.template, "mode": f"{r.mode:04o}", "sha256": r.sha256}
            for r in desired.rendered
        ],
    }
    data.update(desired.template_vars)
    return data


def dump_host_vars(desired: HostDesired) -> str:
    """The host_vars file: one mapping tagged ``!unsafe``, so no value inside is ever templated.

    The tag goes on the whole document, not on each string: Ansible re-resolves
    a tagged scalar as if it were plain (``!unsafe "0644"`` loads as 420).
    """
    header = (
        f"# Generated by appliance for host {desired.host.name}: release {desired.version}.\n"
        "# Variables of playbooks/deploy.yml; every value is data (!unsafe), never a template.\n"
    )
    body = yaml.safe_dump(host_vars(desired), sort_keys=False, allow_unicode=True, width=1000)
    return f"{header}--- !unsafe\n{body}"


def ansible_cfg(directory: Path, forks: int) -> str:
    return f"""# Generated by appliance: settings for playbooks/deploy.yml.
[defaults]
host_key_checking = True
gathering = explicit
forks = {forks}
timeout = {SSH_TIMEOUT}
interpreter_python = auto_silent
retry_files_enabled = False
nocows = True
home = {directory}/ansible-home
local_tmp = {directory}/local-tmp

[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=30s -o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=3
control_path_dir = {directory}/cp
"""


@dataclass(frozen=True, slots=True)
class RunFiles:
    config: Path
    inventory: Path
    host_vars: dict[str, Path]


def write_run_files(plans: Sequence[HostDesired], directory: Path) -> RunFiles:
    """Inventory, one host_vars file per host and ``ansible.cfg``, written into ``directory``."""
    if not plans:
        raise DeploymentError("the Ansible engine got no host to converge")
    inventory_dir = directory / "inventory"
    (inventory_dir / "host_vars").mkdir(parents=True, exist_ok=True)
    inventory = Inventory(schema_version=1, hosts=[p.host for p in plans])
    for plan in plans:
        if "model-server" not in plan.host.roles:
            raise DeploymentError(
                f"{plan.host.name}: the deploy playbook runs on model-server hosts only"
            )
    (inventory_dir / "hosts.ini").write_text(ansible_ini(inventory))
    paths = {}
    for plan in plans:
        paths[plan.host.name] = inventory_dir / "host_vars" / f"{plan.host.name}.yml"
        paths[plan.host.name].write_text(dump_host_vars(plan))
    (directory / "ansible.cfg").write_text(ansible_cfg(directory, len(plans)))
    return RunFiles(directory / "ansible.cfg", inventory_dir / "hosts.ini", paths)


def emit_ansible(plans: Sequence[HostDesired], directory: Path) -> Path:
    """Write what plain ``ansible-playbook playbooks/deploy.yml`` needs into ``directory``.

    The plans are the same per-host plans as ``deploy``'s (facts read over SSH;
    nothing is changed on any host): ``ansible.cfg``, ``inventory/hosts.ini``
    and ``inventory/host_vars/<host>.yml``. Written beside ``directory`` and
    moved into place whole, so a failure leaves nothing half-written. Returns
    ``directory/ansible.cfg``.
    """
    if directory.exists():
        raise InputError(
            f"--emit-ansible: {directory} already exists; give a new directory (it is created)"
        )
    if not directory.parent.is_dir():
        raise InputError(f"--emit-ansible: the parent directory {directory.parent} does not exist")
    partial = directory.with_name(f".{directory.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        files = write_run_files(plans, partial)
        # ansible.cfg names its own directory (home, temp, control paths): point it at the final one.
        files.config.write_text(
            files.config.read_text().replace(str(partial), str(directory.resolve()))
        )
        partial.rename(directory)
    except BaseException:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
        raise
    return directory / "ansible.cfg"


# --- running --------------------------------------------------------------------------


@contextlib.contextmanager
def _deferred_signals() -> Iterator[Callable[[], bool]]:
    """Ctrl-C or SIGTERM during the run: stop ansible-playbook, then act as if it came now.

    ansible-runner's own handler would replace the process's SIGINT/SIGTERM
    handlers for good; this one restores them and re-raises the signal.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(received)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        signal.raise_signal(received[0])


def _failure_text(event: dict[str, Any]) -> str:
    data = event.get("event_data", {})
    res = data.get("res", {}) or {}
    results = [
        r
        for r in res.get("results", [])
        if isinstance(r, dict) and (r.get("failed") or r.get("unreachable"))
    ]
    detail = results[0] if results else res
    text = str(detail.get("msg") or "").strip()
    stderr = str(detail.get("stderr") or "").strip()
    if stderr:
        text = f"{text}: {' | '.join(stderr.splitlines()[-3:])}" if text else stderr
    item = detail.get("_ansible_item_label") or detail.get("item")
    where = str(data.get("task") or "a task")
    if isinstance(item, str):
        where = f"{where} ({item})"
    message = f"{where}: {text or 'failed'}"
    return message if len(message) <= 500 else message[:497] + "..."


def _reporter(on_event: Callable[[Event], None]) -> Callable[[dict[str, Any]], bool]:
    """ansible-runner's event handler: one progress event per finished task and host."""
    done: dict[str, int] = {}

    def handle(event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        host, task = data.get("host"), str(data.get("task") or "a task")
        kind = event.get("event")
        if not isinstance(host, str):
            return True
        if kind in ("runner_on_ok", "runner_on_skipped"):
            done[host] = done.get(host, 0) + 1
            on_event(Progress("converge", 0, None, done[host], None, item=task, host=host))
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get(
            "ignore_errors"
        ):
            on_event(Warned("converge", f"{host}: {task} failed"))
        return True

    return handle


def converge(
    plans: Sequence[HostDesired],
    *,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[HostOutcome]:
    import ansible_runner  # type: ignore[import-untyped]

    # ansible-playbook from this interpreter's environment (the venv), not whatever PATH finds first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    with tempfile.TemporaryDirectory(prefix="appliance-ansible-") as tmp:
        files = write_run_files(plans, Path(tmp))
        with _deferred_signals() as cancelled:
            runner = ansible_runner.run(
                private_data_dir=tmp,
                playbook=str(PLAYBOOK),
                inventory=str(files.inventory),
                forks=len(plans),
                timeout=RUN_TIMEOUT,
                quiet=True,
                suppress_env_files=True,
                envvars={
                    "PATH": path,
                    "ANSIBLE_CONFIG": str(files.config),
                    "ANSIBLE_HOST_KEY_CHECKING": "True",
                },
                cancel_callback=lambda: cancelled() or (cancel is not None and cancel.is_set()),
                event_handler=_reporter(on_event or (lambda event: None)),
            )
            if cancel is not None and cancel.is_set() and runner.status == "canceled":
                raise Cancelled(
                    "cancelled by the operator: ansible-playbook was stopped; deploy again to resume"
                )
            failures: dict[str, str] = {}
            for event in runner.events:
                data = event.get("event_data", {})
                host = data.get("host")
                if (
                    event.get("event") in ("runner_on_failed", "runner_on_unreachable")
                    and host not in failures
                    and not data.get("ignore_errors")
                ):
                    failures[host] = _failure_text(event)
            stats: dict[str, dict[str, int]] = runner.stats or {}
            tail = " | ".join(runner.stdout.read().strip().splitlines()[-3:])
            not_run = f"ansible-playbook did not run ({runner.status}, exit {runner.rc}): {tail}"
            timed_out = runner.status == "timeout"
    return [host_outcome(p.host.name, stats, failures, timed_out, not_run) for p in plans]


def host_outcome(
    name: str,
    stats: dict[str, dict[str, int]],
    failures: dict[str, str],
    timed_out: bool,
    not_run: str,
) -> HostOutcome:
    """One host's outcome from the run's stats and first failure message (pure)."""
    if timed_out:
        return HostOutcome(
            name, False, False, f"ansible-playbook did not finish within {RUN_TIMEOUT} s"
        )
    if name in stats.get("dark", {}):
        return HostOutcome(name, False, False, f"unreachable: {failures.get(name, 'no answer')}")
    if name in stats.get("failures", {}):
        return HostOutcome(name, False, False, failures.get(name, "a task failed"))
    if name not in stats.get("processed", {}):
        return HostOutcome(name, False, False, not_run)
    changed = stats.get("changed", {}).get(name, 0) > 0
    return HostOutcome(name, True, changed, "converged" if changed else "already converged")
