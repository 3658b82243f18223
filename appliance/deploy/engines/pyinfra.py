"""The pyinfra engine: converge hosts to their ``HostDesired`` through pyinfra's API.

What it lays down (and nothing else; activation, health and ``current`` are
the deploy's (``deploy.activation``), engine-independent):

- the appliance directories;
- the release: every file uploaded into ``releases/.staging-<v>/`` (pyinfra
  skips a file whose remote copy already matches, so an interrupted upload
  resumes), checked on the host with ``sha256sum -c`` against the signed
  digests, the virtualenv created there offline from the bundled wheels, then
  made read-only and renamed to ``releases/<v>`` in one step; an existing
  release is checked, never rewritten;
- the release's rendered unit and environment files under
  ``/etc/appliance/releases/<v>/``;
- with Keycloak: its system user and group, its owned directories, its
  distribution unpacked outside the release (``staging.dist_command``), and
  the secret files uploaded from their private local copies (0600).

All hosts run in one pyinfra state (parallel); a failing host does not stop
the others and is reported as failed. Each finished operation is reported per
host (``Progress("converge", host=...)``); a set ``cancel`` stops the run
before the next operation starts (raising ``Cancelled``): an operation is never
cut in half, and the next deploy resumes.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from appliance.deploy.host_desired import HostDesired, HostOutcome
from appliance.deploy.staging import checklist, dist_command, reuse_command, staging_command
from appliance.errors import Cancelled
from appliance.events import Event, Progress, Warned

OnEvent = Callable[[Event], None]

CANCELLED = "cancelled by the operator before the next operation; deploy again to resume"


def _op_name(state: Any, op_hash: str) -> str:
    names = sorted(state.get_op_meta(op_hash).names)
    return names[0] if names else op_hash


class _Progress:
    """Per-host counts of finished operations (pure; fed by pyinfra's callbacks)."""

    def __init__(self, on_event: OnEvent, cancel: threading.Event | None) -> None:
        self.on_event = on_event
        self.cancel = cancel
        self.done: Counter[str] = Counter()
        self.totals: dict[str, int] = {}

    def starting(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(CANCELLED)

    def succeeded(self, host: str, name: str) -> None:
        self.done[host] += 1
        self.on_event(
            Progress(
                "converge", 0, None, self.done[host], self.totals.get(host), item=name, host=host
            )
        )

    def failed(self, host: str, name: str) -> None:
        self.on_event(Warned("converge", f"{host}: {name} failed"))


def _load_pyinfra() -> None:
    """Import pyinfra while standard output is not a terminal.

    pyinfra decides once, at import, whether to draw its own spinner on the
    terminal (and asks the terminal for its size). Front ends draw progress
    from our events instead: a spinner would scribble over the TUI, and under
    the TUI the size query itself fails.
    """
    if "pyinfra.progress" not in sys.modules:
        with contextlib.redirect_stdout(io.StringIO()):
            import pyinfra.progress  # noqa: F401


def _callbacks(progress: _Progress) -> Any:
    """A pyinfra ``BaseStateCallback`` forwarding to ``progress`` (pyinfra is imported lazily)."""
    from pyinfra.api.state import BaseStateCallback

    class Callbacks(BaseStateCallback):
        @staticmethod
        def operation_start(state: Any, op_hash: Any) -> None:
            progress.starting()

        @staticmethod
        def operation_host_success(
            state: Any, host: Any, op_hash: Any, retry_count: int = 0
        ) -> None:
            progress.succeeded(host.name, _op_name(state, op_hash))

        @staticmethod
        def operation_host_error(
            state: Any, host: Any, op_hash: Any, retry_count: int = 0, max_retries: int = 0
        ) -> None:
            progress.failed(host.name, _op_name(state, op_hash))

    return Callbacks()


def _inventory_data(desired: HostDesired) -> dict[str, object]:
    ssh = desired.host.ssh
    data: dict[str, object] = {
        "ssh_hostname": desired.host.address,
        "ssh_user": ssh.user,
        "ssh_port": ssh.port,
    }
    if ssh.key is not None:
        data["ssh_key"] = str(ssh.key)
    if ssh.known_hosts is not None:
        data["ssh_known_hosts_file"] = str(ssh.known_hosts)
        data["ssh_strict_host_key_checking"] = "yes"
    return data


def converge(
    plans: Sequence[HostDesired],
    *,
    on_event: OnEvent | None = None,
    cancel: threading.Event | None = None,
) -> list[HostOutcome]:
    _load_pyinfra()
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    by_name = {p.host.name: p for p in plans}
    inventory = Inventory(([(p.host.name, _inventory_data(p)) for p in plans], {}))
    state = State(inventory=inventory, config=Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=100))
    progress = _Progress(on_event or (lambda event: None), cancel)
    state.add_callback_handler(_callbacks(progress))
    problems: dict[str, str] = {}
    try:
        connect_all(state)
        for host in list(state.activated_hosts):
            try:
                _add_host_ops(state, host, by_name[host.name])
            except PyinfraError as exc:
                # One host's problem (e.g. a path in the way) must not stop the others.
                problems[host.name] = f"planning its operations failed: {exc}"
                state.fail_hosts({host})
        progress.totals = {host.name: len(state.ops.get(host, {})) for host in inventory}
        run_ops(state)
    except PyinfraError as exc:  # raised when no host is left to run on
        for host in inventory:
            problems.setdefault(host.name, str(exc))
    outcomes = []
    for name in by_name:
        host = inventory.get_host(name)
        failed = name in problems or host in state.failed_hosts or host not in state.activated_hosts
        if not failed:
            message = "converged"
        elif host not in state.activated_hosts:
            message = problems.get(name, "could not connect over SSH")
        else:
            message = problems.get(name, "an operation failed (see the log above)")
        outcomes.append(HostOutcome(name, not failed, False, message))
    return outcomes


def _add_host_ops(state: Any, host: Any, desired: HostDesired) -> None:
    """Plan one host's operations (facts are read here, so this can fail per host)."""
    from pyinfra.api.operation import add_op
    from pyinfra.facts.files import Directory, File
    from pyinfra.operations import files, server

    staging = f"{desired.release_dir.rsplit('/', 1)[0]}/.staging-{desired.version}"
    for directory in desired.directories:
        add_op(
            state,
            files.directory,
            name=f"directory {directory}",
            path=directory,
            present=True,
            mode="755",
            host=host,
        )
    for user in desired.users:
        add_op(state, server.group, name=f"group {user.name}", group=user.name, system=True,
               host=host)  # fmt: skip
        add_op(state, server.user, name=f"system user {user.name}", user=user.name, group=user.name,
               home=user.home, shell=user.shell, system=True, create_home=False, ensure_home=False,
               host=host)  # fmt: skip
    for owned in desired.owned_dirs:
        add_op(state, files.directory, name=f"directory {owned.path}", path=owned.path, present=True,
               user=owned.owner, group=owned.owner, mode=f"{owned.mode:o}", host=host)  # fmt: skip
    release_present = bool(host.get_fact(Directory, path=desired.release_dir))
    check = shlex.quote(f"{staging if not release_present else desired.release_dir}/.sha256sums")
    if not release_present:
        if reuse := reuse_command(desired, staging):
            add_op(state, server.shell, name=f"take {len(desired.reused)} base files from the release in place",
                   commands=[f"mkdir -p {shlex.quote(staging)}", reuse], host=host)  # fmt: skip
        for f in desired.uploaded:
            rel = f.path.removeprefix(desired.release_dir + "/")
            add_op(state, files.put, name=f"upload {rel}", src=str(f.source), dest=f"{staging}/{rel}",
                   mode="644", create_remote_dir=True, host=host)  # fmt: skip
        add_op(state, files.put, name="checksums", src=io.StringIO(checklist(desired)),
               dest=f"{staging}/.sha256sums", mode="644", host=host)  # fmt: skip
        commands = [f"cd {shlex.quote(staging)} && sha256sum --quiet --strict -c {check}"]
        if staged := staging_command(desired, staging):
            commands.append(staged)
        commands.append(
            f"chmod -R a-w {shlex.quote(staging)} && mv -T {shlex.quote(staging)} {shlex.quote(desired.release_dir)}"
        )
        add_op(
            state,
            server.shell,
            name=f"verify and install release {desired.version}",
            commands=commands,
            host=host,
        )
    else:
        add_op(state, server.shell, name=f"check release {desired.version}",
               commands=[f"cd {shlex.quote(desired.release_dir)} && sha256sum --quiet --strict -c .sha256sums"], host=host)  # fmt: skip
    for dist in desired.dists:
        if not host.get_fact(File, path=dist.marker):
            add_op(state, server.shell, name=f"unpack {dist.path}", commands=[dist_command(dist)],
                   host=host)  # fmt: skip
    # Secret files come from private local files; pyinfra compares digests, never shows content.
    for secret in desired.secret_files:
        add_op(state, files.put, name=f"secret file {secret.path}", src=str(secret.source),
               dest=secret.path, user=secret.owner, group=secret.owner, mode=f"{secret.mode:o}",
               create_remote_dir=False, host=host)  # fmt: skip
    for rendered in desired.rendered:
        add_op(state, files.put, name=f"render {rendered.path}", src=io.StringIO(rendered.content),
               dest=rendered.path, mode=f"{rendered.mode:o}", create_remote_dir=True, host=host)  # fmt: skip
