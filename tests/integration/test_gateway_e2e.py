"""The security stack end to end on a lab host (CPU profile): Keycloak's place -> token ->
gateway -> llama.cpp.

Keycloak cannot run on this machine (its distribution and a Java 21 runtime
are not reachable from here, and its distribution is not pinned yet), so the
bundle carries a STAND-IN distribution and Java runtime
(``tests/integration/keycloak_standin.py``: not Keycloak, not Java) under the
artifact names ``keycloak`` and ``java-runtime``. Everything the deploy does
with them is the product's: the signed artifacts, the system user, the Java
runtime unpacked into the release, the distribution unpacked under /var/lib,
the realm generated from the plan and the site's access file sent 0600 with
the callers' secrets, the bootstrap admin's file 0600, the unit that builds
once and imports the realm when it changes, the readiness check. The stand-in's
``kc.sh start`` serves the imported realm with the development issuer
(``appliance.lab.dev_issuer``, lab realms only): a standards-compliant OIDC
issuer with client-credentials tokens shaped like Keycloak's. The rest is the
product as a site gets it: the demo-cpu bundle (with the gateway's wheels),
``appliance deploy --site`` with pyinfra, the gateway from the release's own
virtualenv under systemd with a certificate made on the host, and the host's
nftables ruleset from the policy model, loaded with its SSH safety net.

Checked from this machine (the lab's client and admin address):
a token through the gateway's relay to "Keycloak"; a streamed chat completion
through the gateway over verified TLS; the same call without a token (401) and
with a validly signed token whose roles lack the model (403), each with an
audit record in the gateway's hash chain; the model server's and Keycloak's
ports, reached directly from outside the host, dropped by nftables (a timeout,
not a refusal, and the drop counter grows); no secret in any unit, log, audit
record or process argument; a second deploy changes nothing; a new caller in
the access file re-imports the realm without rebuilding; ``appliance status``
shows the gateway, Keycloak and the firewall.
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
from appliance.deploy import transport
from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT
from appliance.deploy.keycloak_files import ADMIN_ENV_PATH, DIST_ROOT, STATE_DIR
from appliance.keycloak.site_secrets import load_client_secrets
from appliance.lab import Lab, dev_site
from appliance.lab.dev_issuer import KEY_FILE, DevIssuer, load_lab_realm, load_or_create_key
from appliance.plan.inventory import HostEntry, load_inventory
from appliance.report.smoke import chat_through_gateway
from tests.integration import helpers
from tests.integration.helpers import appliance

pytestmark = pytest.mark.integration
MakeLab = Callable[..., contextlib.AbstractContextManager[Lab]]
MODEL = "gemma-3-270m-q4_k_m"
MODEL_PORT = 8080
DIST = f"{DIST_ROOT}/1"  # release 1's Keycloak (here the stand-in)


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


def kc_calls(host: HostEntry) -> list[str]:
    """What the stand-in kc.sh was asked, first word of each call."""
    log = transport.run(host, f"cat {DIST}/data/stand-in-calls.log")
    return [line.split()[0] for line in log.splitlines()]


def test_token_gateway_model_and_the_firewall(make_lab: MakeLab, tmp_path: Path) -> None:
    bundle = helpers.build_keycloak_bundle(tmp_path)
    with make_lab("gw", 1) as lab:
        host = load_inventory(lab.inventory).hosts[0]
        url = f"https://{host.address}:8443"
        # The release alone first: the model server on loopback; the gateway's venv and the Java
        # runtime are in the release.
        alone = helpers.deploy(tmp_path, lab.inventory, bundle)["hosts"][0]  # type: ignore[index]
        assert alone["status"] == "converged" and alone["gateway_port"] is None, alone
        assert "127.0.0.1:8080" in alone["message"] and alone["keycloak"] is None
        assert "STAND-IN" in transport.run(
            host, "/opt/appliance/releases/1/runtime/java/bin/java -version 2>&1"
        )

        # access.yaml (a lab realm with one caller) and secrets/ (its client secret)
        site = dev_site.prepare(tmp_path / "site", lab, MODEL)
        site_file = helpers.sso_site(tmp_path / "site" / "site-sso.yaml", lab, url, "access.yaml")
        deployed = helpers.deploy(tmp_path, lab.inventory, bundle, "--site", str(site_file))
        result = deployed["hosts"][0]  # type: ignore[index]
        # The same release, now with Keycloak, the gateway and the firewall.
        assert result["status"] == "converged", result
        assert result["gateway_port"] == 8443 and result["firewall"] is True
        assert f"through the gateway on {url}" in result["message"]
        secrets_dir = tmp_path / "site" / "secrets"
        assert result["keycloak"] == {
            "issuer": f"{url}/realms/appliance",
            "admin_password_file": str(secrets_dir / "keycloak-admin.env"),
            "admin_password_file_on_host": ADMIN_ENV_PATH,
            "client_secrets_file": str(secrets_dir / "client-secrets.json"),
        }
        assert kc_calls(host) == ["build", "import", "start"]
        modes = transport.run(host, f"stat -c '%n %U %a' {ADMIN_ENV_PATH} {DIST}/data/import/appliance-realm.json "
                                 f"{STATE_DIR} {DIST} {DIST}/lib/quarkus {DIST}/bin/kc.sh {DIST}/data")  # fmt: skip
        assert modes.split("\n")[:7] == [
            f"{ADMIN_ENV_PATH} root 600",
            f"{DIST}/data/import/appliance-realm.json appliance-keycloak 600",
            f"{STATE_DIR} appliance-keycloak 700",
            f"{DIST} root 755",
            f"{DIST}/lib/quarkus appliance-keycloak 755",
            f"{DIST}/bin/kc.sh root 755",
            f"{DIST}/data appliance-keycloak 700",  # the import file's directory: owner only
        ]
        assert (
            transport.run(host, "getent passwd appliance-keycloak")
            .strip()
            .endswith(":/usr/sbin/nologin")
        )

        cafile = tmp_path / "gateway.crt"
        cafile.write_text(transport.read_file(host, GATEWAY_CERT))
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
            keys = tmp_path / "stand-in-key"
            keys.mkdir(mode=0o700)
            (keys / KEY_FILE).write_text(
                transport.read_file(host, f"{DIST}/data/stand-in-issuer/{KEY_FILE}")
            )
            (keys / KEY_FILE).chmod(0o600)
            realm = load_lab_realm(secrets_dir / "appliance-realm-import.json")
            issuer = DevIssuer(realm, load_or_create_key(keys), base_url=url)
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
        assert direct(host.address, 8180) == "timeout"  # Keycloak: through the gateway only
        assert direct(host.address, 9000) == "timeout"  # nor its management port
        assert "LISTEN" in transport.run(host, f"ss -ltn 'sport = :{MODEL_PORT}'")

        # Every call has its record in the gateway's hash chain, refusals and relays included.
        log = transport.read_file(host, GATEWAY_AUDIT)
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
        again = helpers.deploy(tmp_path, lab.inventory, bundle, "--site", str(site_file))
        assert again["hosts"][0]["status"] == "unchanged"  # type: ignore[index]
        status = appliance("status", "--inventory", lab.inventory, "--json", cwd=tmp_path)
        row = json.loads(status.stdout)[0]
        assert row["gateway"] == "active" and row["firewall"] is True and row["healthy"]
        assert row["keycloak"] == "active"
        # Secrets only in their 0600 files: not in the release's rendered files, the journal,
        # the audit logs or any process's arguments.
        admin = (
            (secrets_dir / "keycloak-admin.env")
            .read_text()
            .split("KC_BOOTSTRAP_ADMIN_PASSWORD=")[1]
            .strip()
        )
        exposed = transport.run(host, "cat /etc/appliance/releases/1/* /var/log/appliance/audit.jsonl "
                                   f"{GATEWAY_AUDIT}; journalctl -q --no-pager; ps -eo args")  # fmt: skip
        assert secret not in exposed and admin not in exposed and len(admin) > 40

        # A new caller in the access file: its secret is made here, the realm re-imported (not
        # rebuilt), and the new caller gets a token through the gateway.
        access = json.loads((tmp_path / "site" / "access.yaml").read_text())
        access["callers"].append({"client_id": "lab-caller-2", "description": "a second caller",
                                  "models": [MODEL]})  # fmt: skip
        (tmp_path / "site" / "access-2.yaml").write_text(json.dumps(access))
        site_2 = helpers.sso_site(tmp_path / "site" / "site-sso-2.yaml", lab, url, "access-2.yaml")
        changed = helpers.deploy(tmp_path, lab.inventory, bundle, "--site", str(site_2))
        assert changed["hosts"][0]["status"] == "converged", changed  # type: ignore[index]
        assert kc_calls(host) == ["build", "import", "start", "import", "start"]
        second = load_client_secrets(secrets_dir / "client-secrets.json")
        assert second.secret(dev_site.CALLER) == secret  # kept
        with httpx.Client(base_url=url, verify=tls, timeout=30) as client:
            issued = client.post(discovery["token_endpoint"], data=grant,
                                 auth=("lab-caller-2", second.secret("lab-caller-2")))  # fmt: skip
            assert issued.status_code == 200, issued.text
        assert chat_through_gateway(url, issued.json()["access_token"], cafile, model=MODEL,
                                    max_tokens=4).text.strip()  # fmt: skip

        # A site file whose admin network leaves out this deployer: the new ruleset would cut SSH.
        # The deploy notices (a new SSH connection fails), the host puts the previous ruleset back
        # by itself, and the deploy fails with the reason (exit 5); the host still serves.
        locked_out = json.loads(site_2.read_text())
        locked_out["network"]["admin_cidrs"] = [f"{lab.subnet.rsplit('.', 1)[0]}.200/32"]
        bad_site = tmp_path / "site" / "site-locked-out.yaml"
        bad_site.write_text(json.dumps(locked_out))
        failed = helpers.deploy(tmp_path, lab.inventory, bundle, "--site", str(bad_site), expect=5)
        outcome = failed["hosts"][0]  # type: ignore[index]
        assert outcome["status"] == "failed" and "new SSH connection failed" in outcome["message"]
        ruleset = transport.run(host, "nft list table inet appliance")
        assert f"{lab.gateway}" in ruleset  # the previous ruleset (SSH from here) is loaded again
        with httpx.Client(base_url=url, verify=tls, timeout=30) as client:
            fresh = client.post(
                discovery["token_endpoint"], data=grant, auth=(dev_site.CALLER, secret)
            )
        assert chat_through_gateway(
            url, fresh.json()["access_token"], cafile, model=MODEL, max_tokens=8
        ).text.strip()
        record = json.loads(transport.run(host, "tail -n 1 /var/log/appliance/audit.jsonl"))
        assert record["result"] == "failed" and "new SSH connection failed" in record["error"]

        # Uninstall takes Keycloak away with the rest: its units, user, distribution and state.
        appliance("uninstall", "--inventory", lab.inventory, "--yes", cwd=tmp_path)
        left = transport.run(host, "getent passwd appliance-keycloak; getent group appliance-keycloak; "
                                f"ls -d {DIST_ROOT} {STATE_DIR} /etc/systemd/system/appliance-*.service "
                                "2>/dev/null; true")  # fmt: skip
        assert left == ""
        assert "inet appliance" not in transport.run(host, "nft list tables")
