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
from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT
from appliance.deploy.smoke import chat_through_gateway
from appliance.lab import Lab, dev_site
from tests.integration import helpers
from tests.integration.helpers import appliance

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]
MODEL = "gemma-3-270m-q4_k_m"
MODEL_PORT = 8080


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


def test_token_gateway_model_and_the_firewall(make_lab: MakeLab, tmp_path: Path) -> None:
    helpers.build_demo_bundles(tmp_path)
    with make_lab("gw", 1) as lab:
        host = lab.hosts[0]
        site = dev_site.prepare(tmp_path / "site", lab, MODEL)
        assert oct(site.realm_file.stat().st_mode & 0o777) == "0o600"
        with dev_site.serve(site) as running:
            deployed = helpers.deploy(
                tmp_path, lab.inventory, "demo-1", "--site", str(site.site_file)
            )
            result = deployed["hosts"][0]  # type: ignore[index]
            assert result["status"] == "converged", result
            assert result["gateway_port"] == 8443 and result["firewall"] is True
            assert f"https://{host.address}:8443" in result["message"]

            cafile = tmp_path / "gateway.crt"
            cafile.write_text(helpers.on(lab, host, f"cat {GATEWAY_CERT}"))
            url = f"https://{host.address}:8443"
            token = dev_site.token(running, site)
            answer = chat_through_gateway(url, token, cafile, model=MODEL, max_tokens=24)
            assert answer.text.strip() and answer.completion_tokens > 1  # streamed, event by event

            body = {
                "model": MODEL,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}],
            }
            with httpx.Client(
                base_url=url, verify=ssl.create_default_context(cafile=str(cafile)), timeout=30
            ) as client:
                refused = client.post("/v1/chat/completions", json=body)
                assert refused.status_code == 401, refused.text
                assert refused.json()["error"]["code"] == "missing_token"
                # RFC 6750 3.1: a request without credentials gets the challenge, no error code.
                assert refused.headers["www-authenticate"] == 'Bearer realm="appliance"'
                # Signed by the realm's key, right issuer and audience, but no role for the model.
                issuer = running.issuer
                caller = issuer.authenticate(dev_site.CALLER, site.secrets.secret(dev_site.CALLER))
                claims = issuer.claims(caller)
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
            assert "LISTEN" in helpers.on(lab, host, f"ss -ltn 'sport = :{MODEL_PORT}'")

            # Every call has its record in the gateway's hash chain, refusals included.
            log = helpers.on(lab, host, f"cat {GATEWAY_AUDIT}")
            assert verify_chain(log).ok
            records = [json.loads(line) for line in log.splitlines()]
            by_status = {r["status"]: r for r in records}
            assert {200, 401, 403} <= by_status.keys()
            [streamed] = [r for r in records if r["status"] == 200 and r["stream"]]
            assert streamed["client_id"] == dev_site.CALLER and streamed["model"] == MODEL
            assert streamed["route"] == "/v1/chat/completions" and streamed["tokens_out"] > 1
            assert by_status[403]["reason"] == "model_not_allowed"
            assert token not in log and roleless not in log

            # Converged: a second deploy with the same site changes nothing.
            again = helpers.deploy(tmp_path, lab.inventory, "demo-1", "--site", str(site.site_file))
            assert again["hosts"][0]["status"] == "unchanged"  # type: ignore[index]
            status = appliance("status", "--inventory", lab.inventory, "--json", cwd=tmp_path)
            row = json.loads(status.stdout)[0]
            assert row["gateway"] == "active" and row["firewall"] is True and row["healthy"]
        # The secrets stayed on this machine, 0600, and no file the deploy wrote holds them.
        secret = site.secrets.secret(dev_site.CALLER)
        assert secret not in helpers.on(lab, host, "cat /etc/appliance/releases/1/*")
