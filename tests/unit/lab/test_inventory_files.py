"""The inventory the lab writes is the documented shape and passes the deploy's strict schema."""

from __future__ import annotations

from pathlib import Path

import yaml

from appliance.lab.inventory_files import (
    InventoryHost,
    render_etc_hosts,
    render_inventory,
    render_known_hosts,
    roles_for,
)
from appliance.plan.inventory import Inventory

KEY = Path("/run/appliance/lab/lab/id_ed25519")
KNOWN = Path("/run/appliance/lab/lab/known_hosts")

EXPECTED_ONE_HOST = """\
schema_version: 1
hosts:
  - name: lab-1
    address: 10.231.0.2
    ssh: {user: root, port: 22, key: /run/appliance/lab/lab/id_ed25519, known_hosts: /run/appliance/lab/lab/known_hosts}
    roles: [model-server, gateway, keycloak]
"""


def test_one_host_inventory_is_exactly_the_documented_shape() -> None:
    hosts = [InventoryHost("lab-1", "10.231.0.2", roles_for(1, 1))]
    assert render_inventory(hosts, KEY, KNOWN) == EXPECTED_ONE_HOST


def test_several_hosts_split_roles_and_validate() -> None:
    hosts = [InventoryHost(f"lab-{i}", f"10.231.0.{i + 1}", roles_for(i, 3)) for i in (1, 2, 3)]
    data = yaml.safe_load(render_inventory(hosts, KEY, KNOWN))
    inventory = Inventory.model_validate(data)
    assert [h.roles for h in inventory.hosts] == [
        ["gateway", "keycloak"],
        ["model-server"],
        ["model-server"],
    ]
    assert inventory.hosts[0].ssh.key == KEY
    assert inventory.hosts[0].ssh.known_hosts == KNOWN


def test_odd_paths_are_quoted_not_misread() -> None:
    key, known = Path("/tmp/a b/k: x"), Path("/tmp/#known")
    data = yaml.safe_load(
        render_inventory([InventoryHost("h-1", "10.0.0.2", ("gateway",))], key, known)
    )
    assert data["hosts"][0]["ssh"]["key"] == str(key)
    assert data["hosts"][0]["ssh"]["known_hosts"] == str(known)


def test_known_hosts_lines_name_address_and_key() -> None:
    text = render_known_hosts([("lab-1", "10.231.0.2", "ssh-ed25519 AAAAC3Nza root@lab-1\n")])
    assert text == "10.231.0.2,lab-1 ssh-ed25519 AAAAC3Nza\n"


def test_etc_hosts_lists_every_lab_host() -> None:
    hosts = [InventoryHost("lab-1", "10.231.0.2", ()), InventoryHost("lab-2", "10.231.0.3", ())]
    text = render_etc_hosts(hosts, "lab-2")
    assert "10.231.0.2\tlab-1\n" in text
    assert "10.231.0.3\tlab-2\n" in text
    assert text.startswith("127.0.0.1\tlocalhost\n")
