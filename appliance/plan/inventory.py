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


class Inventory(_Strict):
    schema_version: Literal[1]
    hosts: Annotated[list[HostEntry], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        for attribute in ("name", "address"):
            seen: set[str] = set()
            for host in self.hosts:
                value = getattr(host, attribute)
                if value in seen:
                    raise ValueError(f"two hosts have the {attribute} {value!r}")
                seen.add(value)
        return self

    def with_role(self, role: Role) -> list[HostEntry]:
        return [h for h in self.hosts if role in h.roles]


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
