"""The gateway and the host firewall, added to a host's desired state from the site file.

``secure(desired, ...)`` returns the model server's ``HostDesired`` plus:

- the gateway's virtualenv is already part of the release
  (``desired_state`` makes ``gateway-venv`` from the bundle's gateway wheels
  for every release: the gateway's pinned closure, then the appliance wheel
  without its dependencies), so the gateway's code is the release's;
- the gateway's configuration (``gateway.yaml``: what is served, the plan's
  model and the bundle's LoRA adapters with that model as their parent, each
  behind the role that grants it, the site's issuer and keys), its unit
  (``appliance-gateway.service``: a dynamic user, TLS key made on the host at
  first start) and the realm's key set when the site gives it as a file;
- the host's nftables ruleset from the policy model
  (``appliance.netpolicy``, bound to the site's networks and the inventory)
  and the unit that loads it at boot.

All of it is rendered from ``playbooks/templates`` like the model server's
files, so both engines lay down the same bytes. The gateway runs next to the
model server and reaches it on loopback; a gateway host without the
model-server role (split layouts) is refused rather than half-done.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.bundle.site.verify import VerifiedBundle
from appliance.deploy.host_desired import HostDesired, RenderedFile
from appliance.deploy.host_layout import (
    GATEWAY_UNIT,
    GATEWAY_VENV,
    GROUP_STATE_FILE,
    NFT_BOOT_UNIT,
    RELEASES,
    RULESET_PATH,
    UNIT_NAME,
    release_etc,
)
from appliance.deploy.render import render
from appliance.deploy.site import Site
from appliance.errors import InputError
from appliance.plan.engine_args import argv_port
from appliance.plan.group import GroupNetwork
from appliance.plan.inventory import Inventory
from appliance.plan.report import Plan

__all__ = ["GATEWAY_AUDIT", "GATEWAY_CERT", "GATEWAY_UNIT", "gateway_vars", "secure"]

GATEWAY_STATE = (
    "/var/lib/appliance-gateway"  # the unit's StateDirectory: its TLS key and certificate
)
GATEWAY_CERT = f"{GATEWAY_STATE}/tls.crt"
GATEWAY_KEY = f"{GATEWAY_STATE}/tls.key"
GATEWAY_AUDIT = "/var/log/appliance-gateway/audit.jsonl"  # the unit's LogsDirectory


def _loopback_port(plan: Plan) -> int:
    argv = plan.commands[0].argv
    port = argv_port(argv)
    if port is None:
        raise InputError("the engine command has no --port; the gateway cannot reach it")
    host = argv[argv.index("--host") + 1] if "--host" in argv else ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise InputError(
            f"profile {plan.selection.profile.name} binds the model server to {host or 'all addresses'};"
            " expected loopback, where the gateway on the same host is its only client",
            hint="Multi-node layouts with a separate gateway host are not laid down by this release.",
        )
    return port


def _served_and_roles(
    plan: Plan, verified: VerifiedBundle
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The config's ``served`` (the plan's served model; each of the bundle's adapters with
    that model as its parent) and ``access.roles`` (one role per name, as the realm names it)."""
    from appliance.keycloak.realm import served_from_plan

    served = served_from_plan(plan, verified.payload.adapters)
    (base,) = served.models  # a plan serves one model; every adapter runs on it
    names = list(served.models) + list(served.adapters)
    roles = {role: [name] for (role, _), name in zip(served.roles(), names, strict=True)}
    return {"models": [base], "adapters": dict.fromkeys(served.adapters, base)}, roles


def gateway_vars(
    plan: Plan,
    verified: VerifiedBundle,
    site: Site,
    host_name: str,
    host_address: str,
    group: GroupNetwork | None = None,
) -> dict[str, Any]:
    """The gateway's template variables: every value already JSON (also valid YAML), so the
    template only places them and both engines render the same bytes."""
    from appliance.netpolicy.model import GATEWAY_PORT

    etc = release_etc(verified.version)
    release_dir = f"{RELEASES}/{verified.version}"
    tokens = site.config.tokens
    limit = site.config.gateway.rate_limit
    names = list(dict.fromkeys([host_name, host_address, "localhost", "127.0.0.1"]))
    served, roles = _served_and_roles(plan, verified)
    values: dict[str, Any] = {
        "gateway_listen_host": "0.0.0.0",  # the firewall decides who reaches it
        "gateway_port": GATEWAY_PORT,
        "gateway_tls_cert": GATEWAY_CERT,
        "gateway_tls_key": GATEWAY_KEY,
        "gateway_upstream": f"http://127.0.0.1:{_loopback_port(plan)}",
        "gateway_issuer": tokens.issuer,
        "gateway_audience": tokens.audience,
        "gateway_jwks_file": f"{etc}/gateway-jwks.json" if site.jwks is not None else None,
        "gateway_jwks_url": tokens.jwks_url,
        "gateway_jwks_ca_file": f"{etc}/gateway-jwks-ca.pem" if site.jwks_ca is not None else None,
        "gateway_served": served,
        "gateway_roles": roles,
        "gateway_rate_limit": {"requests_per_s": limit.requests_per_s, "burst": limit.burst},
        "gateway_audit_path": GATEWAY_AUDIT,
        "gateway_log_prompts": site.config.gateway.log_prompts,
        "gateway_sso": None
        if site.config.sso is None
        else site.config.sso.model_dump(include={"url", "realm"}),
        # On a serving group's head: answer 503 while the group watch says it is not serving.
        "gateway_group": None
        if group is None
        else {"name": group.name, "state_file": GROUP_STATE_FILE},
    }
    variables = {k: json.dumps(v, sort_keys=True) for k, v in values.items()}
    variables |= {
        "gateway_python": f"{release_dir}/{GATEWAY_VENV}/bin/python",
        "gateway_config": f"{etc}/gateway.yaml",
        "gateway_cert_names": " ".join(f"--name {n}" for n in names),
        "ruleset_path": RULESET_PATH,
    }
    return variables


def _check_gateway_config(rendered: RenderedFile, site: Site) -> None:
    """The rendered config through the gateway's own schema, before any host is touched."""
    import yaml

    from appliance.gateway.config import parse_config

    parse_config(yaml.safe_load(rendered.content), f"the gateway config made from {site.path}")


def _check_roles(desired: HostDesired) -> None:
    roles = desired.host.roles
    if "gateway" not in roles:
        raise InputError(
            f"inventory host {desired.host.name}: expected the gateway role next to model-server "
            f"(the gateway runs on the model server's host), found roles {', '.join(roles)}",
            hint="Add `gateway` to the host's roles, or deploy without --site (model server only).",
        )


def host_ruleset(
    host: str, plan: Plan, site: Site, inventory: Inventory, group: GroupNetwork | None
) -> str:
    """The host's nftables ruleset from the policy model, bound to the site's networks, the
    inventory and the serving group's network (its members' addresses from their facts)."""
    from appliance.netpolicy.model import build_site, policy_for_plan
    from appliance.netpolicy.nftables import host_rulesets

    groups = () if group is None else (group,)
    network = site.config.network
    bound = build_site(network.site_cidrs, network.admin_cidrs, inventory, groups=groups)
    return host_rulesets(policy_for_plan(plan, groups), bound)[f"host-{host}.nft"]


def firewall_only(
    desired: HostDesired,
    plan: Plan,
    verified: VerifiedBundle,
    site: Site,
    inventory: Inventory,
    group: GroupNetwork,
) -> HostDesired:
    """``desired`` plus the host's firewall alone: a serving group's worker (no gateway runs
    there, but its rendezvous and collective ports must be open to the group only)."""
    from dataclasses import replace

    etc = release_etc(verified.version)
    variables = desired.template_vars | {
        "nftables_ruleset": host_ruleset(desired.host.name, plan, site, inventory, group),
        "ruleset_path": RULESET_PATH,
    }
    rendered = (
        RenderedFile(f"{etc}/nftables.nft", "nftables.nft.j2", render("nftables.nft.j2", variables)),
        RenderedFile(f"{etc}/{NFT_BOOT_UNIT}", f"{NFT_BOOT_UNIT}.j2", render(f"{NFT_BOOT_UNIT}.j2", variables)),
    )  # fmt: skip
    return replace(desired, rendered=desired.rendered + rendered, boot_units=(NFT_BOOT_UNIT,),
                   firewall=rendered[0], template_vars=variables)  # fmt: skip


def secure(
    desired: HostDesired,
    plan: Plan,
    verified: VerifiedBundle,
    site: Site,
    inventory: Inventory,
    group: GroupNetwork | None = None,
) -> HostDesired:
    """``desired`` plus the gateway (venv, config, unit) and the host's firewall ruleset;
    ``group``: the serving group this host heads, if any."""
    from dataclasses import replace

    from appliance.netpolicy.model import GATEWAY_PORT

    wheels = verified.payload.gateway
    if wheels is None:
        raise InputError(
            f"bundle {verified.name} v{verified.version} carries no gateway wheels, and --site asks "
            "for the gateway",
            hint="Rebuild the bundle from a recipe with a `gateway:` section (bundles/demo-cpu.yaml)"
            ", or deploy without --site to lay down the model server alone.",
        )
    _check_roles(desired)
    ruleset = host_ruleset(desired.host.name, plan, site, inventory, group)
    # desired_state made the gateway's venv from the bundle's gateway wheels (every release has it).
    assert any(v.path.endswith(f"/{GATEWAY_VENV}") for v in desired.venvs)
    variables = desired.template_vars | gateway_vars(
        plan, verified, site, desired.host.name, desired.host.address, group
    )
    variables["nftables_ruleset"] = ruleset
    etc = release_etc(verified.version)
    rendered = [
        RenderedFile(f"{etc}/gateway.yaml", "gateway.yaml.j2", render("gateway.yaml.j2", variables)),
        RenderedFile(f"{etc}/{GATEWAY_UNIT}", f"{GATEWAY_UNIT}.j2", render(f"{GATEWAY_UNIT}.j2", variables)),
        RenderedFile(f"{etc}/nftables.nft", "nftables.nft.j2", render("nftables.nft.j2", variables)),
        RenderedFile(f"{etc}/{NFT_BOOT_UNIT}", f"{NFT_BOOT_UNIT}.j2", render(f"{NFT_BOOT_UNIT}.j2", variables)),
    ]  # fmt: skip
    _check_gateway_config(rendered[0], site)
    if site.jwks is not None:
        variables["gateway_jwks"] = site.jwks
        rendered.append(RenderedFile(f"{etc}/gateway-jwks.json", "gateway-jwks.json.j2",
                                     render("gateway-jwks.json.j2", variables)))  # fmt: skip
    if site.jwks_ca is not None:
        variables["gateway_jwks_ca"] = site.jwks_ca
        rendered.append(RenderedFile(f"{etc}/gateway-jwks-ca.pem", "gateway-jwks-ca.pem.j2",
                                     render("gateway-jwks-ca.pem.j2", variables)))  # fmt: skip
    return replace(
        desired,
        rendered=desired.rendered + tuple(rendered),
        units=(UNIT_NAME, GATEWAY_UNIT),
        boot_units=(NFT_BOOT_UNIT,),
        firewall=rendered[2],
        gateway_port=GATEWAY_PORT,
        template_vars=variables,
    )
