"""Deployment inventory: which hosts, how to reach them over SSH, which roles they play.

One strict YAML format (``schema_version: 1``) read by both engines: pyinfra
gets the hosts from it directly; Ansible gets an INI inventory rendered from
it. ``appliance lab up`` writes one for its hosts. Unknown keys, duplicate
names or addresses, unreadable or group/world-readable SSH keys are refused
before anything connects anywhere.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.errors import InputError
from appliance.yaml_files import load_model

Role = Literal["model-server", "gateway", "keycloak"]
INVENTORY_SCHEMA_VERSION = 1
# vLLM's multi-node defaults (vLLM 0.32 ParallelConfig.master_port): the head's
# torch.distributed store; the collective library's sockets (gloo, NCCL) take
# kernel-ephemeral ports, which a group member's ``ip_local_port_range`` pins.
DEFAULT_MASTER_PORT = 29501
DEFAULT_GROUP_PORTS = (40000, 44095)


class InventoryError(InputError):
    """An inventory file is invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSettings(_Strict):
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    key: Path | None = Field(
        default=None, description="private key file (0600); relative to the inventory file"
    )
    known_hosts: Path | None = Field(
        default=None, description="known_hosts file pinning the host keys"
    )


class HostEntry(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    address: str
    ssh: SshSettings = SshSettings()
    roles: Annotated[list[Role], Field(min_length=1)]

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            labels = value.split(".")
            if (
                not value
                or len(value) > 253
                or not all(
                    label
                    and len(label) <= 63
                    and label.replace("-", "").isalnum()
                    and not label.startswith("-")
                    for label in labels
                )
            ):
                raise ValueError(f"expected an IP address or a DNS name, found {value!r}") from None
        return value

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, roles: list[Role]) -> list[Role]:
        if len(set(roles)) != len(roles):
            raise ValueError("a role is listed twice")
        return roles


class GroupEntry(_Strict):
    """Hosts that serve one model together (a multi-node group): the head first, then workers.

    ``interface``: the network interface the members reach each other on (vLLM's
    ``VLLM_HOST_IP`` is each member's address on it; ``GLOO_SOCKET_IFNAME`` and
    ``NCCL_SOCKET_IFNAME`` name it). ``master_port``: the head's rendezvous port;
    ``port_range``: the ephemeral ports the members' collective sockets use
    (their ``net.ipv4.ip_local_port_range``), open between members only.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    hosts: Annotated[list[str], Field(min_length=2, max_length=64)]
    interface: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")]
    master_port: Annotated[int, Field(ge=1024, le=65535)] = DEFAULT_MASTER_PORT
    port_range: tuple[
        Annotated[int, Field(ge=1024, le=65535)], Annotated[int, Field(ge=1024, le=65535)]
    ] = DEFAULT_GROUP_PORTS

    @model_validator(mode="after")
    def _ports(self) -> GroupEntry:
        first, last = self.port_range
        if last - first < 255:
            raise ValueError(
                f"port_range {first}-{last}: expected at least 256 ports (first < last), "
                "the collective library opens several sockets per rank"
            )
        if first <= self.master_port <= last:
            raise ValueError(
                f"master_port {self.master_port} lies inside port_range {first}-{last}"
            )
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError("a host is listed twice in the group")
        return self

    @property
    def head(self) -> str:
        return self.hosts[0]


class Inventory(_Strict):
    schema_version: Literal[1]
    hosts: Annotated[list[HostEntry], Field(min_length=1)]
    groups: list[GroupEntry] = Field(
        default_factory=list, description="multi-node serving groups (head first); optional"
    )

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        for attribute in ("name", "address"):
            seen: set[str] = set()
            for host in self.hosts:
                value = getattr(host, attribute)
                if value in seen:
                    raise ValueError(f"two hosts have the {attribute} {value!r}")
                seen.add(value)
        servers = {h.name for h in self.with_role("model-server")}
        grouped: dict[str, str] = {}
        names: set[str] = set()
        for group in self.groups:
            if group.name in names:
                raise ValueError(f"two groups are named {group.name!r}")
            names.add(group.name)
            for member in group.hosts:
                if member not in servers:
                    raise ValueError(
                        f"group {group.name}: {member!r} is not a host with the model-server role"
                    )
                if member in grouped:
                    raise ValueError(
                        f"host {member!r} is in two groups ({grouped[member]} and {group.name})"
                    )
                grouped[member] = group.name
        return self

    def with_role(self, role: Role) -> list[HostEntry]:
        return [h for h in self.hosts if role in h.roles]

    def group_of(self, host: str) -> GroupEntry | None:
        """The serving group ``host`` is a member of, if any."""
        return next((g for g in self.groups if host in g.hosts), None)


def load_inventory(path: Path) -> Inventory:
    inventory = load_model(
        path,
        Inventory,
        "inventory",
        InventoryError,
        expected="schema_version and hosts",
        doc="docs/inventory.md",
    )
    return _resolve_paths(inventory, path.parent.absolute())


def _resolve_paths(inventory: Inventory, base: Path) -> Inventory:
    hosts = []
    for host in inventory.hosts:
        ssh = host.ssh
        key = (base / ssh.key) if ssh.key is not None and not ssh.key.is_absolute() else ssh.key
        known = (
            (base / ssh.known_hosts)
            if ssh.known_hosts is not None and not ssh.known_hosts.is_absolute()
            else ssh.known_hosts
        )
        if key is not None:
            _check_key(host.name, key)
        if known is not None and not known.is_file():
            raise InventoryError(f"host {host.name}: known_hosts file {known} does not exist")
        hosts.append(
            host.model_copy(
                update={"ssh": ssh.model_copy(update={"key": key, "known_hosts": known})}
            )
        )
    return inventory.model_copy(update={"hosts": hosts})


def _check_key(host: str, key: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except OSError as exc:
        raise InventoryError(
            f"host {host}: cannot read SSH key {key}: {exc.strerror or exc}"
        ) from exc
    if mode & 0o077:
        raise InventoryError(
            f"host {host}: SSH key {key} is readable by other users (mode {mode:04o})",
            hint=f"Run `chmod 600 {key}`.",
        )


def ansible_ini(inventory: Inventory) -> str:
    """An Ansible INI inventory with one group per role (names with '-' become '_')."""
    lines = ["[all]"]
    for host in inventory.hosts:
        parts = [
            host.name,
            f"ansible_host={host.address}",
            f"ansible_user={host.ssh.user}",
            f"ansible_port={host.ssh.port}",
        ]
        if host.ssh.key is not None:
            parts.append(f"ansible_ssh_private_key_file={host.ssh.key}")
        if host.ssh.known_hosts is not None:
            parts.append(
                f"ansible_ssh_common_args='-o UserKnownHostsFile={host.ssh.known_hosts} -o StrictHostKeyChecking=yes'"
            )
        lines.append(" ".join(parts))
    for role in ("model-server", "gateway", "keycloak"):
        members = [h.name for h in inventory.hosts if role in h.roles]
        if members:
            lines += ["", f"[{role.replace('-', '_')}]", *members]
    return "\n".join(lines) + "\n"
