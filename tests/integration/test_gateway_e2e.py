"""The security stack end to end on a lab host (CPU profile): token -> gateway -> llama.cpp.

Keycloak cannot run on this machine (its distribution and a Java 21 runtime
are not reachable from here), so the token comes from the development issuer
(``appliance.lab.dev_issuer``, lab only): a standards-compliant OIDC issuer
serving the very realm ``appliance.keycloak`` generates for the plan, with
client-credentials tokens shaped like Keycloak's. Everything else is the
product as a site gets it: the demo-cpu bundle (with the gateway's wheels),
``appliance deploy --site`` with pyinfra, the gateway from the release's own
virtualenv under systemd with a certificate made on the host, and the host's
nftables ruleset from the policy model, loaded with its SSH safety net.

Checked from this machine (the lab's client and admin address):
a streamed chat completion through the gateway over verified TLS; the same
call without a token (401) and with a validly signed token whose roles lack
the model (403), each with an audit record in the gateway's hash chain; the
model server's port, reached directly from outside its host, dropped by
nftables (a timeout, not a refusal, and the drop counter grows); a second
deploy changes nothing; ``appliance status`` shows the gateway and firewall.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from appliance.audit import verify_chain
from appliance.deploy import remote
from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT
from appliance.deploy.smoke import chat_through_gateway
from appliance.inventory import HostEntry, load_inventory
from appliance.lab import Lab, dev_site
from appliance.lab.dev_issuer import KEY_FILE, DevIssuer, load_lab_realm, load_or_create_key
from tests.integration import helpers
from tests.integration.helpers import appliance

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]
MODEL = "gemma-3-270m-q4_k_m"
MODEL_PORT = 8080
ISSUER_DIR = "/root/lab-dev-issuer"  # on the lab host; never a product path


def drops(lab: Lab) -> int:
    out = helpers.on(lab, lab.hosts[0], "nft list counter inet appliance drop_in")
    found = re.search(r"\bpackets (\d+)", out)
    assert found, out
    return int(found.group(1))


def direct(address: str, port: int) -> str:
    try:
        socket.create_connection((address, port), timeout=3).close()
        return "open"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__


def start_issuer_on_host(host: HostEntry, site: dev_site.DevSite, url: str) -> None:
    """The development issuer where Keycloak would run: 127.0.0.1:8180 on the host.

    It runs from the release's gateway venv (the appliance wheel) with the lab
    realm (0600, sent over SSH standard input: never on a command line) and the
    same signing key as this test's copy, under a transient systemd unit.
    """
    realm = base64.b64encode(site.realm_file.read_bytes()).decode()
    key = base64.b64encode((site.directory / "issuer" / KEY_FILE).read_bytes()).decode()
    python = "/opt/appliance/releases/1/gateway-venv/bin/python"
    remote.run(host, f"""set -e
umask 077
mkdir -p {ISSUER_DIR}/state
echo {realm} | base64 -d > {ISSUER_DIR}/realm.json
echo {key} | base64 -d > {ISSUER_DIR}/state/{KEY_FILE}
systemd-run --quiet --unit=lab-dev-issuer {python} -m appliance.lab.dev_issuer \\
  --realm {ISSUER_DIR}/realm.json --listen 127.0.0.1:8180 --state {ISSUER_DIR}/state --hostname {url}
""", timeout=60)  # fmt: skip
    assert remote.poll_ok(
        host, "http://127.0.0.1:8180/realms/appliance/.well-known/openid-configuration", 30
    )


def test_token_gateway_model_and_the_firewall(make_lab: MakeLab, tmp_path: Path) -> None:
    helpers.build_demo_bundles(tmp_path)
    with make_lab("gw", 1) as lab:
        host = load_inventory(lab.inventory).hosts[0]
        url = f"https://{host.address}:8443"
        # The release alone first: the model server on loopback; the gateway's venv is in the release.
        alone = helpers.deploy(tmp_path, lab.inventory, "demo-1")["hosts"][0]  # type: ignore[index]
        assert alone["status"] == "converged" and alone["gateway_port"] is None, alone
        assert "127.0.0.1:8080" in alone["message"]

        site = dev_site.prepare(tmp_path / "site", lab, MODEL)
        assert oct(site.realm_file.stat().st_mode & 0o777) == "0o600"
        start_issuer_on_host(host, site, url)
        issuer = DevIssuer(load_lab_realm(site.realm_file), load_or_create_key(site.directory / "issuer"),
                           base_url=url)  # fmt: skip
        site_file = tmp_path / "site" / "site-sso.yaml"
        site_file.write_text(json.dumps({
            "schema_version": 1,
            "network": {"site_cidrs": [lab.subnet], "admin_cidrs": [f"{lab.gateway}/32"]},
            "tokens": {"issuer": issuer.issuer, "audience": issuer.api_client,
                       "jwks_url": "http://127.0.0.1:8180/realms/appliance/protocol/openid-connect/certs"},
            "sso": {"url": "http://127.0.0.1:8180", "realm": "appliance"},
        }))  # fmt: skip
        deployed = helpers.deploy(tmp_path, lab.inventory, "demo-1", "--site", str(site_file))
        result = deployed["hosts"][0]  # type: ignore[index]
        assert result["status"] == "converged", (
            result
        )  # same release, now with gateway and firewall
        assert result["gateway_port"] == 8443 and result["firewall"] is True
        assert f"through the gateway on {url}" in result["message"]

        cafile = tmp_path / "gateway.crt"
        cafile.write_text(remote.read_file(host, GATEWAY_CERT))
        tls = ssl.create_default_context(cafile=str(cafile))
        secret = site.secrets.secret(dev_site.CALLER)
        with httpx.Client(base_url=url, verify=tls, timeout=30) as client:
            discovery = client.get("/realms/appliance/.well-known/openid-configuration").json()
            assert discovery["issuer"] == f"{url}/realms/appliance"
            assert discovery["token_endpoint"].startswith(url)
            grant = {"grant_type": "client_credentials"}
            wrong = client.post(
                discovery["token_endpoint"], data=grant, auth=(dev_site.CALLER, "wrong")
            )
            assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
            issued = client.post(
                discovery["token_endpoint"], data=grant, auth=(dev_site.CALLER, secret)
            )
            assert issued.status_code == 200, issued.text
            token = issued.json()["access_token"]

        answer = chat_through_gateway(url, token, cafile, model=MODEL, max_tokens=24)
        assert answer.text.strip() and answer.completion_tokens > 1  # streamed, event by event

        body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=url, verify=tls, timeout=30) as client:
            refused = client.post("/v1/chat/completions", json=body)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "missing_token"
            # RFC 6750 3.1: a request without credentials gets the challenge, no error code.
            assert refused.headers["www-authenticate"] == 'Bearer realm="appliance"'
            # Signed by the realm's key, right issuer and audience, but no role for the model.
            claims = issuer.claims(issuer.authenticate(dev_site.CALLER, secret))
            claims["resource_access"] = {issuer.api_client: {"roles": []}}
            roleless = issuer.sign(claims)
            forbidden = client.post("/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {roleless}"})  # fmt: skip
            assert forbidden.status_code == 403, forbidden.text
            assert forbidden.json()["error"]["code"] == "model_not_allowed"
            assert 'error="insufficient_scope"' in forbidden.headers["www-authenticate"]
            listed = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert [m["id"] for m in listed.json()["data"]] == [MODEL]

        # The model server's port from outside its host: dropped by nftables. A closed port
        # would answer with a reset at once; a drop is a timeout, and the drop counter grows.
        before = drops(lab)
        assert direct(host.address, MODEL_PORT) == "timeout"
        assert drops(lab) > before
        assert direct(host.address, 8443) == "open"
        assert (
            direct(host.address, 8180) == "timeout"
        )  # the issuer (Keycloak's place): gateway only
        assert "LISTEN" in remote.run(host, f"ss -ltn 'sport = :{MODEL_PORT}'")

        # Every call has its record in the gateway's hash chain, refusals and relays included.
        log = remote.read_file(host, GATEWAY_AUDIT)
        assert verify_chain(log).ok
        records = [json.loads(line) for line in log.splitlines()]
        [streamed] = [r for r in records if r["status"] == 200 and r["stream"]]
        assert streamed["client_id"] == dev_site.CALLER and streamed["model"] == MODEL
        assert streamed["route"] == "/v1/chat/completions" and streamed["tokens_out"] > 1
        statuses = {(r["event"], r["status"], r["reason"]) for r in records}
        assert {("gateway.call", 401, "missing_token"), ("gateway.call", 403, "model_not_allowed"),
                ("gateway.sso", 401, "upstream_error"), ("gateway.sso", 200, None)} <= statuses  # fmt: skip
        relayed = [
            r for r in records if r["event"] == "gateway.sso" and r["route"].endswith("/token")
        ]
        assert {r["client_id"] for r in relayed} == {dev_site.CALLER}
        assert token not in log and roleless not in log and secret not in log

        # Converged: a second deploy with the same site changes nothing.
        again = helpers.deploy(tmp_path, lab.inventory, "demo-1", "--site", str(site_file))
        assert again["hosts"][0]["status"] == "unchanged"  # type: ignore[index]
        status = appliance("status", "--inventory", lab.inventory, "--json", cwd=tmp_path)
        row = json.loads(status.stdout)[0]
        assert row["gateway"] == "active" and row["firewall"] is True and row["healthy"]
        # No file the deploy wrote holds the client secret.
        assert secret not in remote.run(host, "cat /etc/appliance/releases/1/*")

        # A site file whose admin network leaves out this deployer: the new ruleset would cut SSH.
        # The deploy notices (a new SSH connection fails), the host puts the previous ruleset back
        # by itself, and the deploy fails with the reason (exit 5); the host still serves.
        locked_out = json.loads(site_file.read_text())
        locked_out["network"]["admin_cidrs"] = [f"{lab.subnet.rsplit('.', 1)[0]}.200/32"]
        bad_site = tmp_path / "site" / "site-locked-out.yaml"
        bad_site.write_text(json.dumps(locked_out))
        failed = helpers.deploy(
            tmp_path, lab.inventory, "demo-1", "--site", str(bad_site), expect=5
        )
        outcome = failed["hosts"][0]  # type: ignore[index]
        assert outcome["status"] == "failed" and "new SSH connection failed" in outcome["message"]
        ruleset = remote.run(host, "nft list table inet appliance")
        assert f"{lab.gateway}" in ruleset  # the previous ruleset (SSH from here) is loaded again
        with httpx.Client(base_url=url, verify=tls, timeout=30) as client:
            fresh = client.post(
                discovery["token_endpoint"], data=grant, auth=(dev_site.CALLER, secret)
            )
        assert chat_through_gateway(
            url, fresh.json()["access_token"], cafile, model=MODEL, max_tokens=8
        ).text.strip()
        record = json.loads(remote.run(host, "tail -n 1 /var/log/appliance/audit.jsonl"))
        assert record["result"] == "failed" and "new SSH connection failed" in record["error"]
