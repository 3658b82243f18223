"""``--site``: the plan review says what will be laid down; Done shows the gateway or says there is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT
from appliance.deploy.site import SiteFileError
from tests.tui.conftest import SITE, AppFactory, screen_text, settle, walk_to
from tests.tui.fake_backend import ANSWER, FakeBackend
from tui.present import NO_GATEWAY_HOWTO, SITE_NONE, token_howto
from tui.screens.dialogs import ConfirmDialog

pytestmark = [pytest.mark.tui, pytest.mark.anyio]

ISSUER = "https://sso.site.example/realms/appliance"  # tests/tui/fixtures/site.yaml
SITE_LINE = f"Site file: {SITE}; gateway and firewall will be laid down"


async def test_review_says_the_gateway_and_firewall_will_be_laid_down(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    app = make_app(site=Path(SITE))
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Plan")
        text = screen_text(pilot)
        assert SITE_LINE in text and SITE_NONE not in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert SITE_LINE in screen_text(pilot)  # the confirmation says it again
    assert fake.called("site") == [{"path": Path(SITE)}]
    assert fake.called("review") == [
        {"profile": "cpu-llamacpp", "force": False, "site": Path(SITE)}
    ]


async def test_review_without_a_site_says_model_server_only(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Plan")
        text = screen_text(pilot)
        assert SITE_NONE in text and "Site file:" not in text


async def test_done_with_a_site_shows_the_gateway_firewall_and_how_to_get_a_token(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    app = make_app(site=Path(SITE))
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Done")
        text = screen_text(pilot)
        assert "OK 2 host(s) serving" in text
        for host, address in (("rehearsal-1", "10.231.7.2"), ("rehearsal-2", "10.231.7.3")):
            assert f"serving release 3 through the gateway on https://{address}:8443" in text
            assert f"endpoint: https://{address}:8443/v1 (the gateway: TLS, token)" in text
            assert f"model server: http://127.0.0.1:8080/v1 on {host}" in text
        assert text.count("firewall loaded") == 2
        assert ANSWER in text
        assert "How a caller gets a token" in text
        assert token_howto(ISSUER, "appliance-api") in text
        for words in (
            "client-credentials grant",
            f"{ISSUER}/protocol/openid-connect/token",
            "audience appliance-api",
            GATEWAY_CERT,
            GATEWAY_AUDIT,
        ):
            assert words in text
        assert NO_GATEWAY_HOWTO not in text and "(the host's loopback only)" not in text
    assert fake.called("deploy") == [
        {"profile": "cpu-llamacpp", "force": False, "site": Path(SITE)}
    ]


async def test_done_without_a_site_says_there_is_no_gateway_and_how_to_get_one(
    make_app: AppFactory,
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Done")
        text = screen_text(pilot)
        assert "endpoint: http://127.0.0.1:8080/v1 on rehearsal-1" in text
        assert "(the host's loopback only)" in text
        assert "https://" not in text and "firewall loaded" not in text
        assert "No gateway: how to reach the model server" in text
        assert NO_GATEWAY_HOWTO in text
        assert "--site FILE" in NO_GATEWAY_HOWTO and "ssh -L" in NO_GATEWAY_HOWTO
        assert "How a caller gets a token" not in text


def test_a_bad_site_file_stops_before_the_app_starts(make_app: AppFactory, tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("schema_version: 1\nnetwork: {site_cidrs: [10.0.0.0/8]}\n")
    with pytest.raises(SiteFileError) as raised:
        make_app(site=bad)
    assert "invalid site file" in raised.value.message
    assert "network.admin_cidrs" in raised.value.message


def test_with_keycloak_the_review_and_done_say_where_its_secrets_are(tmp_path: Path) -> None:
    from appliance.deploy.run import HostResult
    from appliance.deploy.site import load_site
    from tui.present import host_access, site_line

    (tmp_path / "access.yaml").write_text(
        '{"schema_version": 1, "callers": [{"client_id": "bot", "description": "b", "models": ["m"]}]}'
    )
    (tmp_path / "site.yaml").write_text(
        (Path(__file__).parent / "fixtures" / "site.yaml").read_text().replace("https://sso.site.example", "https://10.231.7.2:8443")
        .replace("https://10.231.7.2:8443/realms/appliance/protocol", "http://127.0.0.1:8180/realms/appliance/protocol")
        + "sso: {install: {access_file: access.yaml}}\n"
    )  # fmt: skip
    site = load_site(tmp_path / "site.yaml")
    assert site_line(site) == (
        f"Site file: {tmp_path / 'site.yaml'}; gateway, firewall and Keycloak (realm appliance, "
        "from the bundle) will be laid down"
    )
    keycloak = {"issuer": "https://10.231.7.2:8443/realms/appliance",
                "admin_password_file": f"{tmp_path}/secrets/keycloak-admin.env",
                "admin_password_file_on_host": "/etc/appliance/keycloak/keycloak-admin.env",
                "client_secrets_file": f"{tmp_path}/secrets/client-secrets.json"}  # fmt: skip
    result = HostResult("h", "converged", port=8080, gateway_port=8443, firewall=True,
                        keycloak=keycloak)  # fmt: skip
    lines = host_access(result, "10.231.7.2")
    assert lines[-3:] == [
        "  Keycloak: issuer https://10.231.7.2:8443/realms/appliance",
        f"  Keycloak's bootstrap admin password: in {tmp_path}/secrets/keycloak-admin.env (0600; "
        "on the host /etc/appliance/keycloak/keycloak-admin.env, 0600)",
        f"  Callers' client secrets: in {tmp_path}/secrets/client-secrets.json (0600): hand each "
        "caller its own, out of band",
    ]
