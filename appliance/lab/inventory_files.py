"""The files a lab hands to the deploy tools: ``inventory.yml`` and ``known_hosts``.

Pure rendering. ``inventory.yml`` follows ``appliance.plan.inventory`` (schema
version 1), written in the documented compact shape; ``hosts.py`` reads it
back through the strict loader before anyone else does, and renders the
Ansible INI from it, so the lab can never hand out an inventory the deploy
would refuse. Role split: one host plays every role; with several, the first
is the gateway and Keycloak host and the others are model servers (so
gateway-to-model traffic crosses the lab network, as on a real site).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ALL_ROLES = ("model-server", "gateway", "keycloak")
_PLAIN = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9_./-]*\Z")


@dataclass(frozen=True, slots=True)
class InventoryHost:
    name: str
    address: str
    roles: tuple[str, ...]


def roles_for(position: int, count: int) -> tuple[str, ...]:
    """Roles of the ``position``-th (from 1) of ``count`` lab hosts."""
    if count == 1:
        return ALL_ROLES
    return ("gateway", "keycloak") if position == 1 else ("model-server",)


def _scalar(value: str) -> str:
    # Plain when YAML reads it back as the same string (names, addresses, paths), else quoted.
    if _PLAIN.match(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def render_inventory(hosts: Sequence[InventoryHost], key: Path, known_hosts: Path) -> str:
    lines = ["schema_version: 1", "hosts:"]
    for host in hosts:
        ssh = (
            f"{{user: root, port: 22, key: {_scalar(str(key))}, "
            f"known_hosts: {_scalar(str(known_hosts))}}}"
        )
        lines += [
            f"  - name: {_scalar(host.name)}",
            f"    address: {_scalar(host.address)}",
            f"    ssh: {ssh}",
            f"    roles: [{', '.join(host.roles)}]",
        ]
    return "\n".join(lines) + "\n"


def render_known_hosts(entries: Sequence[tuple[str, str, str]]) -> str:
    """``known_hosts`` lines from (host name, address, public key line ``TYPE BASE64 [comment]``)."""
    lines = []
    for name, address, public_key in entries:
        key_type, key_data = public_key.split()[:2]
        lines.append(f"{address},{name} {key_type} {key_data}")
    return "\n".join(lines) + "\n"


def render_etc_hosts(hosts: Sequence[InventoryHost], own: str) -> str:
    """``/etc/hosts`` for lab host ``own``: loopback names plus every lab host by name."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address}\t{h.name}" for h in hosts]
    if own not in {h.name for h in hosts}:
        lines.append(f"127.0.1.1\t{own}")
    return "\n".join(lines) + "\n"
