"""Inventory: strict schema, one invalid fixture per failure mode, SSH key checks, Ansible INI."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.exitcodes import ExitCode
from appliance.plan.inventory import InventoryError, ansible_ini, load_inventory

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures/inventory"

EXPECTED = {
    "unknown-key": "unknown key `hosts[0].adress`; did you mean `address`?",
    "missing-roles": "missing required key `hosts[0].roles`",
    "unknown-role": "`hosts[0].roles[0]` has an unknown value",
    "duplicate-name": "two hosts have the name 'a'",
    "duplicate-address": "two hosts have the address '10.0.0.1'",
    "bad-address": "expected an IP address or a DNS name",
    "bad-port": "less than or equal to 65535",
    "no-hosts": "`hosts`: List should have at least 1 item",
    "bad-schema-version": "`schema_version` has an unknown value",
    "missing-key-file": "cannot read SSH key",
    "bad-name": "`hosts[0].name`: String should match pattern",
    "bad-yaml": "not valid YAML",
    "group-one-host": "`groups[0].hosts`: List should have at least 2 items",
    "group-not-a-model-server": "group g: 'gw' is not a host with the model-server role",
    "group-unknown-host": "group g: 'z' is not a host with the model-server role",
    "group-host-in-two-groups": "host 'b' is in two groups (g and h)",
    "group-host-twice": "`groups[0]`: a host is listed twice in the group",
    "group-master-port-in-range": "master_port 40001 lies inside port_range 40000-44095",
    "group-small-port-range": "port_range 40000-40010: expected at least 256 ports",
    "group-bad-interface": "`groups[0].interface`: String should match pattern",
    "group-duplicate-name": "two groups are named 'g'",
}


def test_good_inventory() -> None:
    inventory = load_inventory(FIXTURES / "good.yaml")
    assert [h.name for h in inventory.hosts] == ["gpu-1", "edge-1"]
    assert [h.name for h in inventory.with_role("gateway")] == ["edge-1"]
    assert inventory.hosts[1].ssh.user == "root" and inventory.hosts[1].ssh.port == 22


def test_a_group_names_its_head_first_and_takes_the_default_ports(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "schema_version: 1\nhosts:\n"
        "  - {name: a, address: 10.0.0.1, roles: [model-server, gateway]}\n"
        "  - {name: b, address: 10.0.0.2, roles: [model-server]}\n"
        "  - {name: c, address: 10.0.0.3, roles: [model-server]}\n"
        "groups:\n  - {name: g, hosts: [b, a], interface: ens1f0}\n"
    )
    inventory = load_inventory(path)
    (group,) = inventory.groups
    assert (group.head, group.hosts, group.interface) == ("b", ["b", "a"], "ens1f0")
    assert (group.master_port, group.port_range) == (29501, (40000, 44095))
    assert inventory.group_of("a") is group and inventory.group_of("c") is None


def test_every_bad_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in (FIXTURES / "bad").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_inventory(name: str) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(FIXTURES / "bad" / f"{name}.yaml")
    assert EXPECTED[name] in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_key_paths_resolve_and_must_be_private(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "id"
    key.parent.mkdir()
    key.write_text("not really a key")
    key.chmod(0o600)
    (tmp_path / "known").write_text("")
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        "schema_version: 1\nhosts:\n  - name: a\n    address: 10.0.0.1\n"
        "    ssh: {key: keys/id, known_hosts: known}\n    roles: [model-server, gateway]\n"
    )
    host = load_inventory(inv).hosts[0]
    assert host.ssh.key == key and host.ssh.known_hosts == tmp_path / "known"
    ini = ansible_ini(load_inventory(inv))
    assert (
        f"a ansible_host=10.0.0.1 ansible_user=root ansible_port=22 ansible_ssh_private_key_file={key}"
        in ini
    )
    assert (
        "[model_server]\na" in ini and "[gateway]\na" in ini and "StrictHostKeyChecking=yes" in ini
    )
    key.chmod(0o644)
    with pytest.raises(InventoryError, match="readable by other users"):
        load_inventory(inv)
