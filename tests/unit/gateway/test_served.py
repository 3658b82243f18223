"""The real thing on loopback: `python -m appliance.gateway` with TLS, in front of a real HTTP upstream.

The gateway runs as its own process from its entry point (uvicorn, TLS with a
site-generated certificate); ``FakeUpstream`` runs under uvicorn in a thread.
Streaming is tested for real: the upstream sends its first event and then
waits, and the client must already hold that event. A client that goes away
mid-stream stops the upstream's generation and is audited as such. Nothing
secret reaches the process's log or the audit file.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from appliance.audit import verify_chain
from appliance.gateway.certs import generate_self_signed
from tests.unit.gateway.conftest import FakeClock, SigningKey, Site, free_port, serving
from tests.unit.gateway.fake_upstream import ANSWER, FakeUpstream

ROOT = Path(__file__).resolve().parents[3]
UPSTREAM_KEY = "sk-upstream-served-test-0123456789"


@dataclass
class Served:
    url: str
    site: Site
    upstream: FakeUpstream
    cert: Path
    log: Path
    process: subprocess.Popen[bytes]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.trust(), timeout=10)

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def audit_until(self, count: int, timeout: float = 10) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.site.audit_records()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.02)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, realm_key: SigningKey) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    site = Site(root, FakeClock(time.time()), [realm_key])  # the process uses the real clock
    site.publish(realm_key)
    upstream = FakeUpstream()
    (root / "upstream.key").write_text(UPSTREAM_KEY + "\n")
    with serving(upstream.app) as upstream_url:
        port = free_port()
        config = site.config_dict(
            listen={"host": "127.0.0.1", "port": port},
            upstream={"url": upstream_url, "api_key_file": str(root / "upstream.key")},
        )
        config_file = root / "gateway.yaml"
        config_file.write_text(yaml.safe_dump(config))
        generate_self_signed(root / "tls.crt", root / "tls.key", ["127.0.0.1", "localhost"])
        log = root / "gateway.log"
        argv = [sys.executable, "-m", "appliance.gateway", "--config", str(config_file)]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{port}"
        s = Served(url, site, upstream, root / "tls.crt", log, process)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, f"the gateway exited:\n{log.read_text()}"
                try:
                    if s.client().get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"no /healthz within 30 s:\n{log.read_text()}"
                time.sleep(0.1)
            yield s
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=40)


def stream_request(s: Served) -> tuple[str, dict[str, object], dict[str, str]]:
    body = {
        "model": "gemma",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello"}],
    }
    return "/v1/chat/completions", body, {"authorization": f"Bearer {s.site.token()}"}


def test_tls_and_a_plain_call(served: Served) -> None:
    with served.client() as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "gemma", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {served.site.token()}"},
        )
    assert response.status_code == 200, response.text
    assert response.http_version == "HTTP/1.1" and "server" not in response.headers
    assert served.upstream.received[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    with pytest.raises(httpx.ConnectError):  # TLS only: the certificate must be trusted
        httpx.get(f"{served.url}/healthz", verify=True)


def test_stream_chunks_arrive_as_the_upstream_sends_them(served: Served) -> None:
    served.upstream.release.clear()
    served.upstream.hold_after_first = True
    before = len(served.site.audit_records())
    path, body, headers = stream_request(served)
    events: list[str] = []
    try:
        with (
            served.client() as client,
            client.stream("POST", path, json=body, headers=headers) as r,
        ):
            assert r.status_code == 200
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    break
            # The upstream is still holding everything after its first event.
            assert not served.upstream.release.is_set()
            assert json.loads(events[0])["choices"][0]["delta"]["content"] == ANSWER[0]
            served.upstream.release.set()
            events += [line[6:] for line in lines if line.startswith("data: ")]
    finally:
        served.upstream.hold_after_first = False
        served.upstream.release.set()
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-2]]
    assert pieces == list(ANSWER)
    assert json.loads(events[-2])["usage"]["completion_tokens"] == len(ANSWER)
    record = served.audit_until(before + 1)[-1]
    assert record["stream"] is True and record["tokens_out"] == len(ANSWER)


def test_a_client_leaving_mid_stream_stops_the_upstream(served: Served) -> None:
    served.upstream.release.clear()
    served.upstream.stream_closed.clear()
    served.upstream.hold_after_first = True
    before = len(served.site.audit_records())
    path, body, headers = stream_request(served)
    try:
        with (
            served.client() as client,
            client.stream("POST", path, json=body, headers=headers) as r,
        ):
            next(line for line in r.iter_lines() if line.startswith("data: "))
        # the client is gone; the upstream was still holding its second event
        assert served.upstream.stream_closed.wait(10), "the upstream stream was not closed"
    finally:
        served.upstream.hold_after_first = False
        served.upstream.release.set()
    record = served.audit_until(before + 1)[-1]
    assert record["reason"] == "client_disconnected" and record["status"] == 200


def test_refusals_over_tls(served: Served) -> None:
    with served.client() as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "gemma"},
            headers={"authorization": "Bearer x.y.z"},
        )
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer ")
        big = "Bearer " + "a" * 20_000  # over max_token_bytes, under the server's header limit
        r = client.post(
            "/v1/chat/completions", json={"model": "gemma"}, headers={"authorization": big}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_too_large")


def test_shutdown_logs_and_audit_hold_no_secret(served: Served, realm_key: SigningKey) -> None:
    """Last in this module: stop the process and read what it left behind."""
    token = served.site.token()
    with served.client() as client:
        client.post("/v1/completions", json={"model": "gemma", "prompt": "p"},
                    headers={"authorization": f"Bearer {token}"})  # fmt: skip
        client.post("/v1/completions", json={"model": "mistral", "prompt": "p"},
                    headers={"authorization": f"Bearer {token}"})  # fmt: skip
    served.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal (systemd counts that as a clean stop)
    assert served.process.wait(timeout=40) in (0, -signal.SIGTERM)
    log = served.log.read_text()
    assert "Application shutdown complete" in log
    audit = served.site.audit_file.read_text()
    assert verify_chain(audit).ok
    assert "JWKS: 1 key(s) from file" in log  # the log is there, and says something
    for secret in (token, *token.split(".")[1:], UPSTREAM_KEY, "PRIVATE KEY"):
        assert secret not in log, "a secret reached the gateway's log"
        assert secret not in audit, "a secret reached the audit log"
    assert oct(os.stat(served.site.audit_file).st_mode & 0o777) == "0o640"
