"""The site file and the gateway + firewall layer of a host's desired state (no host needed).

The rendered gateway configuration must be one the gateway itself accepts
(``appliance.gateway.config``), the unit must pass ``systemd-analyze verify``
where systemd is present, the ruleset must be the policy model's for that host
(and pass ``nft -c`` where nft runs), and Ansible must render every new file
byte for byte (the same check as the model server's files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.bundle.payload import WheelSet
from appliance.bundle.site.verify import VerifiedBundle, verify_bundle
from appliance.deploy.gateway_layer import GATEWAY_UNIT, secure
from appliance.deploy.host_desired import HostDesired
from appliance.deploy.host_layout import NFT_BOOT_UNIT, RULESET_PATH, UNIT_NAME
from appliance.deploy.probe import diff, parse_probe, probe_script
from appliance.deploy.render import desired_state
from appliance.deploy.site import Site, SiteFileError, load_site
from appliance.deploy.staging import venv_command
from appliance.detect.facts_file import load_facts
from appliance.errors import InputError
from appliance.events import drain
from appliance.gateway.config import parse_config
from appliance.model.info import load_model_info
from appliance.plan.inventory import HostEntry, Inventory
from appliance.plan.report import Plan, build_plan
from tests.unit.bundle.conftest import BundleFactory, Trust
from tests.unit.deploy.test_ansible_engine import RECAP, run_render
from tests.unit.keycloak.conftest import ROOT, adapter, plan_for

JWKS = {
    "keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB"}]
}
SITE = """schema_version: 1
network: {site_cidrs: [10.231.0.0/24], admin_cidrs: [10.231.0.1/32]}
tokens:
  issuer: https://sso.site.example/realms/appliance
  jwks_file: jwks.json
gateway:
  log_prompts: false
  rate_limit: {requests_per_s: 2.5, burst: 7}
"""


def write_site(tmp_path: Path, text: str = SITE, jwks: object = JWKS) -> Path:
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def host(roles: tuple[str, ...] = ("model-server", "gateway")) -> HostEntry:
    return HostEntry(name="lab-1", address="10.231.0.2", roles=list(roles))


@pytest.fixture
def plan() -> Plan:
    return plan_for("cpu-avx2", "mistral-7b-instruct-v0.3")


@pytest.fixture
def verified(make_bundle: BundleFactory, trust: Trust) -> VerifiedBundle:
    bundle: VerifiedBundle = drain(verify_bundle(make_bundle(version=4), trust.root_path))
    gateway = WheelSet(
        python="3.11",
        platforms=["manylinux_2_17_x86_64"],
        requirements=["starlette==1.10.0", "uvicorn==0.54.0"],
        files=["gateway-wheels/appliance-0.1.0-py3-none-any.whl", "gateway-wheels/x-1-py3-none-any.whl"],
        no_deps=["gateway-wheels/appliance-0.1.0-py3-none-any.whl"],
    )  # fmt: skip
    payload = bundle.payload.model_copy(update={"gateway": gateway})
    return dataclasses.replace(bundle, payload=payload)


def secured(verified: VerifiedBundle, plan: Plan, site: Site, entry: HostEntry) -> HostDesired:
    base = desired_state(verified, plan.commands[0], entry, engine="llamacpp")
    return secure(base, plan, verified, site, Inventory(schema_version=1, hosts=[entry]))


def test_the_site_file_is_strict_and_its_files_are_checked(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path))
    assert site.config.tokens.audience == "appliance-api"  # the realm generator's default
    assert json.loads(site.jwks or "") == JWKS
    with pytest.raises(SiteFileError, match=r"tokens\.isuer"):
        load_site(write_site(tmp_path, SITE.replace("issuer:", "isuer:")))
    with pytest.raises(SiteFileError, match=r"jwks_url.*or jwks_file"):
        load_site(write_site(tmp_path, SITE.replace("  jwks_file: jwks.json\n", "")))
    with pytest.raises(SiteFileError, match="private or symmetric"):
        load_site(write_site(tmp_path, jwks={"keys": [{**JWKS["keys"][0], "d": "secret"}]}))
    with pytest.raises(SiteFileError, match="non-empty `keys`"):
        load_site(write_site(tmp_path, jwks={"keys": []}))
    with pytest.raises(SiteFileError, match=r"missing\.json: cannot read"):
        load_site(write_site(tmp_path, SITE.replace("jwks.json", "missing.json")))
    with pytest.raises(SiteFileError, match="jwks_ca_file is the CA of jwks_url"):
        load_site(
            write_site(tmp_path, SITE.replace("  jwks_file", "  jwks_ca_file: ca.pem\n  jwks_file"))
        )


def test_the_gateway_config_is_one_the_gateway_accepts(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    d = secured(verified, plan, load_site(write_site(tmp_path)), host())
    text = next(r for r in d.rendered if r.path.endswith("/gateway.yaml")).content
    config = parse_config(yaml.safe_load(text))
    assert (
        str(config.upstream.url) == "http://127.0.0.1:8080"
    )  # the plan's model server, on loopback
    assert config.listen.port == 8443 and d.gateway_port == 8443
    assert config.tokens.issuer == "https://sso.site.example/realms/appliance"
    assert str(config.tokens.jwks_file) == "/etc/appliance/releases/4/gateway-jwks.json"
    # The role the realm generator makes for the plan's model grants exactly that model.
    assert config.access.roles == {"model:mistral-7b-instruct-v0.3": ("mistral-7b-instruct-v0.3",)}
    assert config.served.models == ("mistral-7b-instruct-v0.3",) and config.served.adapters == {}
    assert (config.rate_limits.default.requests_per_s, config.rate_limits.default.burst) == (2.5, 7)
    assert str(config.audit.path) == "/var/log/appliance-gateway/audit.jsonl"
    jwks = next(r for r in d.rendered if r.path.endswith("/gateway-jwks.json"))
    assert json.loads(jwks.content) == JWKS


def test_the_bundles_adapters_are_served_on_the_plans_model_each_behind_its_role(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    payload = verified.payload.model_copy(
        update={"adapters": [adapter("support-lora"), adapter("legal-lora")]}
    )
    with_adapters = dataclasses.replace(verified, payload=payload)
    d = secured(with_adapters, plan, load_site(write_site(tmp_path)), host())
    rendered = next(r for r in d.rendered if r.path.endswith("/gateway.yaml"))
    assert yaml.safe_load(rendered.content)["served"] == {
        "models": ["mistral-7b-instruct-v0.3"],
        "adapters": {
            "legal-lora": "mistral-7b-instruct-v0.3",
            "support-lora": "mistral-7b-instruct-v0.3",
        },
    }
    config = parse_config(yaml.safe_load(rendered.content))
    assert config.served.resolve("legal-lora") == ("mistral-7b-instruct-v0.3", "legal-lora")
    # The roles are the realm's (appliance.keycloak.realm): one per model and per adapter.
    assert config.access.roles == {
        "model:mistral-7b-instruct-v0.3": ("mistral-7b-instruct-v0.3",),
        "adapter:support-lora": ("support-lora",),
        "adapter:legal-lora": ("legal-lora",),
    }
    role_names = {r["name"] for r in _realm_roles(with_adapters, plan)}
    assert role_names == set(config.access.roles)


def _realm_roles(verified: VerifiedBundle, plan: Plan) -> list[dict[str, object]]:
    from appliance.keycloak.access import parse_access
    from appliance.keycloak.realm import realm_for_plan

    access = parse_access(
        {"schema_version": 1, "callers": [{"client_id": "bot", "adapters": ["legal-lora"]}]},
        where="test",
    )
    realm = realm_for_plan(plan, access, verified.payload.adapters)
    roles: list[dict[str, object]] = realm["roles"]["client"]["appliance-api"]
    return roles


def test_sso_relay_from_the_site_file_and_bad_values_refused_before_any_host(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    with_sso = SITE + "sso: {url: 'http://127.0.0.1:8180', realm: appliance}\n"
    d = secured(verified, plan, load_site(write_site(tmp_path, with_sso)), host())
    config = parse_config(
        yaml.safe_load(next(r for r in d.rendered if r.path.endswith("/gateway.yaml")).content)
    )
    assert config.sso is not None and (config.sso.url, config.sso.realm) == (
        "http://127.0.0.1:8180",
        "appliance",
    )
    bad = SITE + "sso: {url: 'http://127.0.0.1:8180/auth'}\n"
    with pytest.raises(InputError, match=r"(?s)gateway config made from .*site\.yaml.*sso\.url"):
        secured(verified, plan, load_site(write_site(tmp_path, bad)), host())


def test_units_venvs_and_firewall_of_a_secured_host(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    d = secured(verified, plan, load_site(write_site(tmp_path)), host())
    assert d.units == (UNIT_NAME, GATEWAY_UNIT) and d.boot_units == (NFT_BOOT_UNIT,)
    gateway_venv = d.venvs[-1]
    assert gateway_venv.path == "/opt/appliance/releases/4/gateway-venv"
    command = venv_command(gateway_venv, d.release_dir, "/S")
    # The closure from the bundled wheels only, then the appliance wheel without its dependencies.
    assert command == (
        "rm -rf /S/gateway-venv && python3 -m venv /S/gateway-venv && PIP_NO_INDEX=1 "
        "/S/gateway-venv/bin/pip install --quiet --no-index --find-links /S/files/gateway-wheels "
        "starlette==1.10.0 uvicorn==0.54.0 && PIP_NO_INDEX=1 /S/gateway-venv/bin/pip install "
        "--quiet --no-index --no-deps /S/files/gateway-wheels/appliance-0.1.0-py3-none-any.whl"
        # then the marker naming what it was built from (an adapter-only release may link it)
        f" && printf '%s' {gateway_venv.wheels_digest} > /S/gateway-venv/.appliance-wheels"
    )
    assert len(gateway_venv.wheels_digest) == 64 and not gateway_venv.reusable
    unit = d.unit_file_of(GATEWAY_UNIT).content
    venv_python = "/opt/appliance/releases/4/gateway-venv/bin/python"
    assert (
        f"ExecStart={venv_python} -m appliance.gateway --config /etc/appliance/releases/4/gateway.yaml"
        in unit
    )
    assert "--name lab-1 --name 10.231.0.2 --name localhost --name 127.0.0.1" in unit
    assert "DynamicUser=yes" in unit and "CapabilityBoundingSet=\n" in unit
    ruleset = d.firewall
    assert ruleset is not None and ruleset.path == "/etc/appliance/releases/4/nftables.nft"
    assert "tcp dport 8443" in ruleset.content and "drop_offsite" in ruleset.content
    assert "10.231.0.1" in ruleset.content  # SSH from the admin address


def test_probe_and_diff_cover_the_gateway_and_firewall(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    d = secured(verified, plan, load_site(write_site(tmp_path)), host())
    empty = parse_probe(subprocess.run(["sh", "-c", probe_script(d)], capture_output=True,
                                       text=True, check=True).stdout)  # fmt: skip
    kinds = [(c.kind, c.target) for c in diff(d, empty)]
    assert ("venv", "/opt/appliance/releases/4/gateway-venv") in kinds
    assert ("firewall", RULESET_PATH) in kinds
    assert ("start", GATEWAY_UNIT) in kinds and ("enable", NFT_BOOT_UNIT) in kinds
    assert ("start", NFT_BOOT_UNIT) not in kinds  # enabled for boot, never started by a deploy
    converged = {
        "current": d.release_dir, "nft": True, "venvs": dict.fromkeys([v.path for v in d.venvs], True),
        "units": {u: {"enabled": "enabled", "active": "active"} for u in (*d.units, *d.boot_units)},
        "dirs": dict.fromkeys(d.directories, True),
        "files": {f.path: f.sha256 for f in d.release_files} | {r.path: r.sha256 for r in d.rendered}
        | {f"/etc/systemd/system/{u}": d.unit_file_of(u).sha256 for u in (*d.units, *d.boot_units)}
        | {RULESET_PATH: d.firewall.sha256 if d.firewall else ""},
    }  # fmt: skip
    assert diff(d, converged) == []
    converged["nft"] = False  # someone flushed the table: the deploy loads it again
    assert [c.kind for c in diff(d, converged)] == ["firewall"]


def test_refusals_name_what_is_wrong(verified: VerifiedBundle, plan: Plan, tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path))
    with pytest.raises(InputError, match="expected the gateway role next to model-server"):
        secured(verified, plan, site, host(("model-server",)))
    no_gateway = dataclasses.replace(
        verified, payload=verified.payload.model_copy(update={"gateway": None})
    )
    with pytest.raises(InputError, match="carries no gateway wheels"):
        secured(no_gateway, plan, site, host())
    outside = load_site(write_site(tmp_path, SITE.replace("10.231.0.0/24", "10.99.0.0/24")
                                              .replace("10.231.0.1/32", "10.99.0.1/32")))  # fmt: skip
    with pytest.raises(InputError, match="expected an address inside the site"):
        secured(verified, plan, outside, host())


@pytest.mark.skipif(
    shutil.which("nft") is None or os.geteuid() != 0, reason="nft -c needs nft and root"
)
def test_the_ruleset_passes_nft_check(verified: VerifiedBundle, plan: Plan, tmp_path: Path) -> None:
    d = secured(verified, plan, load_site(write_site(tmp_path)), host())
    assert d.firewall is not None
    path = tmp_path / "ruleset.nft"
    path.write_text(d.firewall.content)
    result = subprocess.run(
        ["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_units_pass_systemd_analyze_verify(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    d = secured(verified, plan, load_site(write_site(tmp_path)), host())
    for unit in (GATEWAY_UNIT, NFT_BOOT_UNIT):
        path = tmp_path / unit
        # Executables must exist for verify: point them at this machine's.
        text = (
            d.unit_file_of(unit)
            .content.replace(
                "/opt/appliance/releases/4/gateway-venv/bin/python",
                shutil.which("python3") or "python3",
            )
            .replace("/usr/sbin/nft", shutil.which("nft") or "/bin/true")
        )
        path.write_text(text)
        result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                                text=True, check=False)  # fmt: skip
        problems = [ln for ln in result.stderr.splitlines() if unit in ln and "Unknown" in ln]
        assert not problems, result.stderr


def test_ansible_renders_the_gateway_and_firewall_files_byte_for_byte(
    verified: VerifiedBundle, plan: Plan, tmp_path: Path
) -> None:
    payload = verified.payload.model_copy(update={"adapters": [adapter("support-lora")]})
    verified = dataclasses.replace(verified, payload=payload)  # `served` with an adapter
    d = secured(verified, plan, load_site(write_site(tmp_path)), host())
    assert "support-lora" in next(r for r in d.rendered if r.path.endswith("/gateway.yaml")).content
    rendered = tuple(
        dataclasses.replace(r, path=str(tmp_path / "etc" / Path(r.path).name)) for r in d.rendered
    )
    d = dataclasses.replace(d, rendered=rendered)
    result = run_render([d], tmp_path)
    assert {m[0]: m[1:] for m in RECAP.findall(result.stdout)} == {"lab-1": ("0",)}, result.stdout[
        -3000:
    ]
    for r in d.rendered:
        assert Path(r.path).read_text() == r.content, r.template


def test_a_serving_group_head_answers_for_its_group_and_its_worker_gets_the_firewall_alone(
    verified: VerifiedBundle, tmp_path: Path
) -> None:
    """The head's gateway reads the group watch's state; the worker runs no gateway but its
    firewall opens the group's ports to the other member only, on the group's interface."""
    from appliance.deploy.gateway_layer import firewall_only
    from appliance.plan.group import GroupNetwork
    from appliance.plan.profiles import load_profiles

    profiles = load_profiles()
    facts = load_facts(ROOT / "tests/fixtures/facts/cpu-avx2-2nodes.json")
    head, worker = (HostEntry(name=f"lab-{i}", address=f"10.231.0.{i + 1}", roles=list(r))
                    for i, r in ((1, ("model-server", "gateway")), (2, ("model-server",))))  # fmt: skip
    group = GroupNetwork("pair", ("lab-1", "lab-2"), "eth0", ("10.231.0.2", "10.231.0.3"), 29501,
                         (40000, 44095))  # fmt: skip
    info = load_model_info(ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3")
    plan = build_plan(profiles, facts, facts_source="x", requested=profiles["cpu-vllm-group"],
                      model=info, group=group)  # fmt: skip
    inventory = Inventory(schema_version=1, hosts=[head, worker])
    site = load_site(write_site(tmp_path))
    secured_head = secure(desired_state(verified, plan.commands[0], head, engine="vllm"), plan,
                          verified, site, inventory, group)  # fmt: skip
    config = parse_config(yaml.safe_load(
        next(r for r in secured_head.rendered if r.path.endswith("/gateway.yaml")).content))  # fmt: skip
    assert config.group is not None and config.group.name == "pair"
    assert str(config.group.state_file) == "/run/appliance/group-state.json"
    walled = firewall_only(desired_state(verified, plan.commands[1], worker, engine="vllm"), plan,
                           verified, site, inventory, group)  # fmt: skip
    assert walled.gateway_port is None and GATEWAY_UNIT not in walled.units
    assert walled.firewall is not None and walled.boot_units == (NFT_BOOT_UNIT,)
    ruleset = walled.firewall.content
    assert 'oifname "eth0"' in ruleset and "29501" in ruleset and "40000-44095" in ruleset
    assert "10.231.0.2" in ruleset  # the head, the worker's only peer
