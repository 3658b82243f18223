"""Access per LoRA adapter: two callers, what each sees in /v1/models, what each may call, the audit.

The site serves one base model and two adapters on it. Caller ``team-a`` holds
the base model and ``support-lora``; caller ``team-b`` holds only ``legal-lora``
(an adapter granted without its base). The model server is ``FakeUpstream``
listing the adapters as vLLM does (``parent``, ``root``), with a wrong parent for
``legal-lora`` and entries the gateway's config does not know: the config wins.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.audit import GENESIS, chain_record
from appliance.gateway.calls import MAX_RECORD_BYTES, Call
from appliance.gateway.config import Served
from appliance.gateway.model_list import visible_models
from appliance.gateway.reasons import Reason
from appliance.gateway.upstream import Usage
from tests.unit.gateway.conftest import AUDIENCE, FakeClock, Gateway, Site, open_gateway
from tests.unit.gateway.fake_upstream import ANSWER, FakeUpstream

pytestmark = pytest.mark.anyio

BASE = "base-7b"
SERVED = {"models": [BASE], "adapters": {"support-lora": BASE, "legal-lora": BASE}}
ROLES = {
    f"model:{BASE}": [BASE],
    "adapter:support-lora": ["support-lora"],
    "adapter:legal-lora": ["legal-lora"],
}
CALLERS = {
    "team-a": [f"model:{BASE}", "adapter:support-lora"],
    "team-b": ["adapter:legal-lora"],
}


@pytest.fixture
def upstream() -> FakeUpstream:
    # vLLM's listing, except that it names the wrong parent for legal-lora, and serves a
    # model and an adapter the gateway's config does not know.
    return FakeUpstream(
        models=(BASE, "stray-model"),
        adapters={"support-lora": BASE, "legal-lora": "another-base", "stray-lora": BASE},
    )


@pytest.fixture
async def gateway(site: Site, upstream: FakeUpstream, clock: FakeClock) -> AsyncIterator[Gateway]:
    gw = await open_gateway(site.config(served=SERVED, access={"roles": ROLES}), upstream, clock)
    try:
        yield gw
    finally:
        await gw.client.aclose()
        await gw.state.aclose()


def token(site: Site, caller: str) -> str:
    return site.token(
        azp=caller,
        sub=f"service-account-{caller}",
        resource_access={AUDIENCE: {"roles": CALLERS[caller]}},
    )


async def listed(gateway: Gateway, site: Site, caller: str) -> list[dict[str, Any]]:
    response = await gateway.client.get(
        "/v1/models", headers={"authorization": f"Bearer {token(site, caller)}"}
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_each_caller_lists_only_what_it_may_call_with_parents(
    gateway: Gateway, site: Site
) -> None:
    team_a = await listed(gateway, site, "team-a")
    assert [(m["id"], m["parent"]) for m in team_a] == [(BASE, None), ("support-lora", BASE)]
    # the rest of the entry as served, but the host path (vLLM's `root`) is not the caller's
    assert team_a[1]["owned_by"] == "vllm" and "root" not in team_a[1]
    # An adapter granted without its base model is listed, with its parent from the config
    # (the model server said "another-base").
    team_b = await listed(gateway, site, "team-b")
    assert [(m["id"], m["parent"]) for m in team_b] == [("legal-lora", BASE)]
    record = site.audit_records()[-1]
    assert (record["route"], record["client_id"]) == ("/v1/models", "team-b")
    assert (record["base"], record["adapter"]) == (None, None)


async def call(gateway: Gateway, site: Site, caller: str, model: str, **body: Any) -> Any:
    response = await gateway.chat(token(site, caller), model, **body)
    return response, site.audit_records()[-1]


@pytest.mark.parametrize(
    ("caller", "model", "base", "adapter"),
    [
        ("team-a", BASE, BASE, None),
        ("team-a", "support-lora", BASE, "support-lora"),
        ("team-b", "legal-lora", BASE, "legal-lora"),
    ],
)
async def test_granted_calls_are_forwarded_and_the_audit_names_what_served_them(
    gateway: Gateway,
    site: Site,
    upstream: FakeUpstream,
    caller: str,
    model: str,
    base: str,
    adapter: str | None,
) -> None:
    response, record = await call(gateway, site, caller, model)
    assert response.status_code == 200, response.text
    assert json.loads(upstream.received[-1]["body"])["model"] == model
    assert record == {
        **record,
        "client_id": caller,
        "model": model,
        "base": base,
        "adapter": adapter,
        "status": 200,
        "reason": None,
        "stream": False,
    }


@pytest.mark.parametrize(
    ("caller", "model", "base", "adapter"),
    [
        ("team-a", "legal-lora", BASE, "legal-lora"),  # the base model does not grant its adapters
        ("team-b", "support-lora", BASE, "support-lora"),
        ("team-b", BASE, BASE, None),  # an adapter does not grant its base model
    ],
)
async def test_an_ungranted_name_is_403_and_audited_with_what_would_serve_it(
    gateway: Gateway,
    site: Site,
    upstream: FakeUpstream,
    caller: str,
    model: str,
    base: str,
    adapter: str | None,
) -> None:
    response, record = await call(gateway, site, caller, model)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert (
        f"model {model!r} is not granted to client {caller!r}"
        in response.json()["error"]["message"]
    )
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert upstream.received == [], "a refused call never reaches the model server"
    assert record == {
        **record,
        "event": "gateway.call",
        "client_id": caller,
        "model": model,
        "base": base,
        "adapter": adapter,
        "status": 403,
        "reason": "model_not_allowed",
        "detail": response.json()["error"]["message"],
    }


async def test_the_answer_does_not_reveal_whether_an_adapter_exists(
    gateway: Gateway, site: Site
) -> None:
    served, served_record = await call(gateway, site, "team-b", "support-lora")
    # stray-lora is on the model server, but not in the config: nobody may call it.
    stray, stray_record = await call(gateway, site, "team-b", "stray-lora")
    assert stray.status_code == served.status_code == 403
    assert stray.json()["error"]["message"] == served.json()["error"]["message"].replace(
        "support-lora", "stray-lora"
    )
    # The audit record tells the operator which one was served (and that stray-lora is not).
    assert (served_record["base"], served_record["adapter"]) == (BASE, "support-lora")
    assert (stray_record["base"], stray_record["adapter"]) == (None, None)


@pytest.mark.parametrize("usage", [True, False])
async def test_a_streamed_adapter_call_is_audited_with_its_base(
    gateway: Gateway, site: Site, usage: bool
) -> None:
    body: dict[str, Any] = {"stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    async with gateway.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "legal-lora", "messages": [{"role": "user", "content": "hi"}], **body},
        headers={"authorization": f"Bearer {token(site, 'team-b')}"},
    ) as response:
        assert response.status_code == 200
        text = (await response.aread()).decode()
    events = [json.loads(e[6:]) for e in text.splitlines() if e.startswith("data: {")]
    assert [e["choices"][0]["delta"]["content"] for e in events if e["choices"]] == list(ANSWER)
    record = site.audit_records()[-1]
    assert record == {
        **record,
        "model": "legal-lora",
        "base": BASE,
        "adapter": "legal-lora",
        "stream": True,
        "status": 200,
        "reason": None,
        "usage_source": "upstream" if usage else "chunks",
    }


async def test_a_refused_stream_to_an_adapter_is_audited_as_a_stream(
    gateway: Gateway, site: Site
) -> None:
    response, record = await call(gateway, site, "team-a", "legal-lora", stream=True)
    assert response.status_code == 403
    assert (record["stream"], record["base"], record["adapter"]) == (True, BASE, "legal-lora")


async def test_every_call_record_has_base_and_adapter(gateway: Gateway, site: Site) -> None:
    await gateway.chat(None, "legal-lora")  # refused before the body is read
    await gateway.client.get("/nowhere")
    records = site.audit_records()
    assert [(r["status"], r["base"], r["adapter"]) for r in records] == [
        (401, None, None),
        (404, None, None),
    ]


def test_visible_models_takes_parents_from_the_config_and_drops_what_it_does_not_know() -> None:
    served = Served(models=("b1", "b2"), adapters={"lora": "b2"})
    upstream = [
        {"id": "b1", "parent": "b2"},  # the config says b1 is a base model
        "not an entry",
        {"id": 7},
        {"id": "lora", "parent": "b1", "root": "/a"},
        {"id": "lora", "parent": "b2"},  # listed twice: once
        {"id": "unknown", "parent": None},  # granted (by a stale role) but not served
        {"id": "b2"},
    ]
    allowed = frozenset({"b1", "lora", "unknown"})
    assert visible_models(upstream, served, allowed) == [
        {"id": "b1", "parent": None},
        {"id": "lora", "parent": "b2"},
    ]
    assert visible_models(upstream, served, frozenset()) == []


async def test_a_call_record_with_every_capped_field_at_its_limit_fits_the_bound(
    site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    """``base`` and ``adapter`` come from the config; with names at their longest (non-ASCII,
    6 bytes each escaped) and the token's claims too, a refused call's record stays bounded."""
    base, lora = "\u00e9" * 128, "\u00e8" * 128
    config = site.config(
        served={"models": [base], "adapters": {lora: base}},
        access={"roles": {"model:base": [base], "adapter:lora": [lora]}},
    )
    gw = await open_gateway(config, upstream, clock)
    try:
        big_claims = site.token(
            sub="s" * 1500,
            azp="\U0001f600" * 200,
            resource_access={AUDIENCE: {"roles": ["model:base"]}},
        )
        response = await gw.chat(big_claims, lora)
    finally:
        await gw.client.aclose()
        await gw.state.aclose()
    assert response.status_code == 403
    line = site.audit_file.read_text().splitlines()[-1]
    record = json.loads(line)
    assert record["base"].endswith("...") and record["adapter"].endswith("...")
    assert base.startswith(record["base"][:-3]) and lora.startswith(record["adapter"][:-3])
    assert len(line) <= MAX_RECORD_BYTES, len(line)


def test_the_largest_possible_call_record_fits_the_bound() -> None:
    """Every capped field at its cap (escaped non-ASCII), the largest numbers, in the chain."""
    huge = "\u0001" * 5000
    call = Call(request_id="f" * 16, method=huge, route=huge, peer=huge, started=0.0,
                subject=huge, client_id=huge, model=huge, base=huge, adapter=huge, stream=True,
                status=499, reason=Reason.UPSTREAM_STREAM_BROKEN, detail=huge,
                usage=Usage(2**53, 2**53, "upstream"), first_byte_ms=99_999_999.999)  # fmt: skip
    record = call.record(99_999_999.0, with_prompt=False, max_prompt_bytes=256)
    entry = chain_record({"at": "2025-10-09T08:53:20.123+00:00", **record}, GENESIS)
    size = len(json.dumps(entry, sort_keys=True))
    assert 2048 < size <= MAX_RECORD_BYTES, size  # above the bound before base and adapter
