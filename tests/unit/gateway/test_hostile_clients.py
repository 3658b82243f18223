"""The gateway under hostile clients: the real `python -m appliance.gateway`, real TLS, raw sockets.

Two gateway processes on loopback (short bounds, so the suite stays quick):
``quick`` (headers and body within 1 s) and ``capped`` (3 connections per
address, 5 in all, 2 health slots). Clients speak raw HTTP/1.1 over TLS so they
can misbehave: trickle headers, never finish a body, hold connections, send
huge paths, model names, tokens with non-finite times, nested bodies. Each
refusal is checked on the wire (status, code, the connection closed) and in the
audit log (a record per call, or a bounded ``gateway.connections`` summary),
and every record stays under ``MAX_RECORD_BYTES``. Other clients are answered
while the slow ones hang.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from appliance.audit import verify_chain
from appliance.gateway.calls import MAX_RECORD_BYTES
from appliance.gateway.certs import generate_self_signed
from tests.unit.gateway.conftest import FakeClock, SigningKey, Site, free_port, serving
from tests.unit.gateway.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Served:
    port: int
    site: Site
    context: ssl.SSLContext
    log: Path

    def connect(self, source: str = "127.0.0.1") -> ssl.SSLSocket:
        raw = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source, 0)
        )
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")

    def ask(self, request: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
        with self.connect(source) as s:
            s.sendall(request)
            return read_response(s)

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        records = self.site.audit_records()
        return [r for r in records if event is None or r["event"] == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.records(event)) < count:
            assert time.monotonic() < deadline, f"no {event} record: {self.records()}"
            time.sleep(0.05)
        return found


def read_response(s: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed without an answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed(s: ssl.SSLSocket, within: float) -> bool:
    """Whether the peer closes ``s`` (after whatever it still sends) within ``within`` seconds."""
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    return True


def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nhost: gw\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, token: str | None = None, *headers: str) -> bytes:
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    extra = "".join(f"{h}\r\n" for h in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{auth}{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@contextmanager
def gateway_process(root: Path, key: SigningKey, limits: dict[str, Any]) -> Iterator[Served]:
    site = Site(root, FakeClock(time.time()), [key])  # the process uses the real clock
    site.publish(key)
    with serving(FakeUpstream().app) as upstream_url:
        port = free_port()
        config = site.config_dict(
            listen={"host": "127.0.0.1", "port": port},
            upstream={"url": upstream_url},
            limits=limits,
            audit={"path": str(site.audit_file), "connection_report_interval_s": 0.5},
        )
        config_file = root / "gateway.yaml"
        config_file.write_text(yaml.safe_dump(config))
        generate_self_signed(root / "tls.crt", root / "tls.key", ["127.0.0.1"])
        log = root / "gateway.log"
        argv = [sys.executable, "-m", "appliance.gateway", "--config", str(config_file)]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        context = ssl.create_default_context(cafile=str(root / "tls.crt"))
        served = Served(port, site, context, log)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, f"the gateway exited:\n{log.read_text()}"
                try:
                    if served.ask(get("/healthz"))[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"no /healthz within 30 s:\n{log.read_text()}"
                time.sleep(0.1)
            yield served
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=40)
            assert "Traceback" not in log.read_text(), log.read_text()
            for line in site.audit_file.read_bytes().splitlines():
                assert len(line) <= MAX_RECORD_BYTES, f"an audit record of {len(line)} bytes"
            assert verify_chain(site.audit_file.read_text()).ok


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, realm_key: SigningKey) -> Iterator[Served]:
    limits = {"header_timeout_s": 1, "body_timeout_s": 1}
    with gateway_process(tmp_path_factory.mktemp("quick"), realm_key, limits) as served:
        yield served


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, realm_key: SigningKey) -> Iterator[Served]:
    limits = {"max_connections": 5, "max_connections_per_address": 3, "health_connections": 2}
    with gateway_process(tmp_path_factory.mktemp("capped"), realm_key, limits) as served:
        yield served


# --- slow clients ---------------------------------------------------------------------------


def test_slowloris_headers_are_cut_without_stalling_others(quick: Served) -> None:
    before = sum(r["counts"].get("header_timeout", 0) for r in quick.records("gateway.connections"))
    slow = [quick.connect() for _ in range(3)]
    started = time.monotonic()
    slow[0].sendall(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n")
    for i in range(4):  # a header line every 0.3 s: each byte must not extend the deadline
        for s in slow[:2]:
            s.sendall(f"x-trickle-{i}: y\r\n".encode())
        # meanwhile another client is answered at once
        assert quick.ask(get("/healthz"))[0] == 200
        time.sleep(0.3)
    status, headers, body = read_response(slow[0])
    took = time.monotonic() - started
    assert (status, json.loads(body)["error"]["code"]) == (408, "header_timeout")
    assert headers["connection"] == "close" and 0.9 < took < 3
    assert closed(slow[0], 2) and closed(slow[1], 2)
    assert closed(slow[2], 2), "a connection that never sent a byte was not cut"
    records = quick.wait_for("gateway.connections")
    cut = sum(r["counts"].get("header_timeout", 0) for r in quick.records("gateway.connections"))
    assert cut - before >= 3 and "127.0.0.1" in records[-1]["addresses"]


def test_a_tls_handshake_that_never_finishes_is_cut(quick: Served) -> None:
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        raw.settimeout(4)
        started = time.monotonic()
        with suppress(ConnectionResetError):
            assert raw.recv(1024) == b""
        assert time.monotonic() - started < 3


def test_a_slow_body_is_answered_408_and_audited(quick: Served) -> None:
    token = quick.site.token()
    with quick.connect() as s:
        head = post("/v1/chat/completions", b"", token).replace(
            b"content-length: 0", b"content-length: 1000"
        )
        s.sendall(head + b'{"model": "gemma", ')
        started = time.monotonic()
        for _ in range(3):
            time.sleep(0.3)
            s.sendall(b" ")
        status, headers, body = read_response(s)
        assert (status, json.loads(body)["error"]["code"]) == (408, "body_timeout")
        assert headers["connection"] == "close" and time.monotonic() - started < 3
        assert closed(s, 2)
    record = quick.records("gateway.call")[-1]
    assert (record["status"], record["reason"], record["client_id"]) == (
        408,
        "body_timeout",
        "team-a",
    )


def test_a_body_no_route_reads_is_cut_by_the_server(quick: Served) -> None:
    """/healthz answers without reading the body; the connection is cut after the body bound."""
    with quick.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: gw\r\ncontent-length: 100000\r\n\r\nabc")
        assert read_response(s)[0] == 200
        started = time.monotonic()
        for _ in range(4):  # the client goes on trickling its body after the answer
            s.sendall(b"x")
            time.sleep(0.2)
        assert closed(s, 4) and time.monotonic() - started < 3.5
    wanted = lambda r: r["counts"].get("body_timeout", 0) > 0  # noqa: E731
    deadline = time.monotonic() + 5
    while not any(wanted(r) for r in quick.records("gateway.connections")):
        assert time.monotonic() < deadline, "the body cut was not audited"
        time.sleep(0.1)


# --- connection caps ------------------------------------------------------------------------


def test_caps_per_address_and_in_total_keep_health_answerable(capped: Served) -> None:
    held = []
    try:
        for _ in range(3):  # the per-address cap of 127.0.0.1
            s = capped.connect()
            s.sendall(get("/healthz"))
            assert read_response(s)[0] == 200
            held.append(s)
        # a fourth from the same address: health only, and closed after it
        status, headers, _ = capped.ask(get("/healthz"))
        assert status == 200 and headers["connection"] == "close"
        status, headers, body = capped.ask(get("/v1/models", "authorization: Bearer x.y.z"))
        assert (status, json.loads(body)["error"]["code"]) == (503, "too_many_connections")
        assert headers["connection"] == "close"
        # while one over-cap connection of the address is open, another is dropped unanswered
        with capped.connect() as waiting:
            time.sleep(0.2)
            with capped.connect() as dropped:
                assert closed(dropped, 3)
            waiting.sendall(get("/healthz"))
            assert read_response(waiting)[0] == 200
        # other addresses fill the total cap (5): 127.0.0.2 gets the two places left
        for _ in range(2):
            s = capped.connect("127.0.0.2")
            s.sendall(get("/healthz"))
            assert read_response(s)[0] == 200
            held.append(s)
        status, headers, _ = capped.ask(get("/healthz"), source="127.0.0.3")
        assert status == 200 and headers["connection"] == "close"
        status, _, body = capped.ask(post("/v1/completions", b"{}"), source="127.0.0.3")
        assert (status, json.loads(body)["error"]["code"]) == (503, "too_many_connections")
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)  # the server sees the closes
    assert capped.ask(get("/v1/models"))[0] == 401  # places again: the token is judged
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 5
    while not {"over_address_cap", "over_total_cap", "dropped"} <= counts.keys():
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)
        counts = {}
        for r in capped.records("gateway.connections"):
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
    assert counts["over_address_cap"] >= 3 and counts["over_total_cap"] >= 2
    assert counts["dropped"] >= 1
    # the refused connections wrote summaries, not a record each
    assert all(r["route"] != "/v1/completions" for r in capped.records("gateway.call"))


# --- what a request can make the gateway write ----------------------------------------------


def raw_token(key: SigningKey, payload: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "RS256", "kid": key.kid, "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(payload.encode())}"
    signature = key.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def test_audit_records_are_bounded_whatever_the_request(
    capped: Served, realm_key: SigningKey
) -> None:
    site = capped.site
    before = len(capped.records())
    huge = "x" * 12_000
    assert capped.ask(get("/" + huge, "user-agent: " + huge))[0] == 404
    assert capped.ask(get("/%F0%9F%98%80" * 1500))[0] == 404  # non-ASCII: 12 bytes escaped each
    assert capped.ask(f"{'A' * 5000} /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n".encode())[0] == 405
    token = site.token()
    body = json.dumps({"model": "\u2028" * 50_000, "messages": []}).encode()
    assert capped.ask(post("/v1/chat/completions", body, token))[0] == 403
    big_claims = site.token(sub="s" * 1500, azp="\U0001f600" * 200)  # under 8 KiB
    body = json.dumps({"model": "gemma" * 20_000}).encode()
    assert capped.ask(post("/v1/chat/completions", body, big_claims))[0] == 403
    records = capped.records()[before:]
    assert len(records) == 5
    for record in records:
        size = len(json.dumps(record, sort_keys=True))
        assert size <= MAX_RECORD_BYTES, (size, record)
    assert records[-1]["client_id"].endswith("...") and records[-1]["model"].endswith("...")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "1e400"), ("exp", "NaN"), ("exp", "-Infinity"), ("exp", "true"), ("exp", '"1"'),
        ("exp", "1" + "0" * 400), ("exp", "1e300"), ("iat", "NaN"), ("nbf", "NaN"),
        ("iat", "Infinity"), ("nbf", "null"),
    ],
)  # fmt: skip
def test_non_finite_time_claims_are_refused(
    quick: Served, realm_key: SigningKey, claim: str, value: str
) -> None:
    claims = quick.site.claims()
    claims.pop(claim, None)
    text = json.dumps(claims)[:-1] + f', "{claim}": {value}}}'
    token = raw_token(realm_key, text)
    body = json.dumps({"model": "gemma", "messages": []}).encode()
    status, headers, answer = quick.ask(post("/v1/chat/completions", body, token))
    if value == "null":  # absent: nbf is optional
        assert status == 200
        return
    error = json.loads(answer)["error"]
    assert (status, error["code"]) == (401, "malformed_token"), answer
    assert f"claim {claim}" in error["message"] and headers["www-authenticate"].startswith("Bearer")
    record = quick.records("gateway.call")[-1]
    assert (record["status"], record["reason"]) == (401, "malformed_token")


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_deeply_nested_token_is_401(quick: Served, realm_key: SigningKey, where: str) -> None:
    deep = "[" * 2000 + "]" * 2000  # about 5.5 KiB as a token: under the 8 KiB limit
    claims = quick.site.claims()
    if where == "payload":  # signed by the realm's key: only the nesting is wrong
        token = raw_token(realm_key, json.dumps(claims)[:-1] + f', "x": {deep}}}')
    else:  # the JOSE header is read before any signature is checked
        header = f'{{"alg": "RS256", "kid": "{realm_key.kid}", "x": {deep}}}'
        signed = raw_token(realm_key, json.dumps(claims))
        encoded = base64.urlsafe_b64encode(header.encode()).rstrip(b"=").decode()
        token = ".".join([encoded, *signed.split(".")[1:]])
    body = json.dumps({"model": "gemma", "messages": []}).encode()
    status, _, answer = quick.ask(post("/v1/chat/completions", body, token))
    error = json.loads(answer)["error"]
    assert (status, error["code"]) == (401, "malformed_token"), answer
    assert "recursion" in error["message"] or "nested" in error["message"], answer
    assert quick.records("gateway.call")[-1]["status"] == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "nested deeper than 64"),
        (b'{"model": "gemma", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper than 64"),
        (b'{"model": "gemma", "model": "secret-model"}', "duplicate JSON key 'model'"),
        (b'{"model": "gemma", "temperature": NaN}', "NaN is not a JSON number"),
        (b'{"model": "gemma\xff"}', "not UTF-8"),
        (b'{"model": "gemma", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["deep-array", "deep-field", "duplicate-key", "nan", "not-utf8", "huge-int"],
)
def test_hostile_bodies_are_400(quick: Served, body: bytes, message: str) -> None:
    status, _, answer = quick.ask(post("/v1/chat/completions", body, quick.site.token()))
    error = json.loads(answer)["error"]
    assert (status, error["code"]) == (400, "bad_request") and message in error["message"]
    record = quick.records("gateway.call")[-1]
    assert (record["status"], record["reason"]) == (400, "bad_request")


# --- the gateway's own input files, and a hostile model server (in process) -----------------


@pytest.mark.parametrize("where", ["config", "config.json", "jwks", "api_key", "tls_cert", "ca"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "oversized"])
def test_input_files_are_regular_and_bounded(site: Site, where: str, kind: str) -> None:
    """`--check` refuses each of the gateway's input files as a FIFO, a directory or too big
    (exit 2, a message naming it), in a subprocess whose timeout turns a hang into a failure."""
    import os

    root = site.root
    generate_self_signed(root / "tls.crt", root / "tls.key", ["localhost"])
    (root / "upstream.key").write_text("sk-1\n")
    (root / "ca.pem").write_text((root / "tls.crt").read_text())
    config = site.config_dict(
        upstream={"url": "http://127.0.0.1:9", "api_key_file": str(root / "upstream.key")}
    )
    if where == "ca":
        config["tokens"] |= {
            "jwks_url": "https://127.0.0.1:9/certs",
            "jwks_ca_file": str(root / "ca.pem"),
        }
        config["tokens"].pop("jwks_file")
    name = "gateway.json" if where == "config.json" else "gateway.yaml"
    config_file = root / name
    config_file.write_text(json.dumps(config) if where == "config.json" else yaml.safe_dump(config))
    target = {
        "config": config_file, "config.json": config_file, "jwks": site.jwks_file,
        "api_key": root / "upstream.key", "tls_cert": root / "tls.crt", "ca": root / "ca.pem",
    }[where]  # fmt: skip
    if kind == "oversized":
        with target.open("ab") as f:
            f.write(b"#" * (17 * 1024 * 1024))
    else:
        target.unlink()
        os.mkfifo(target) if kind == "fifo" else target.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "appliance.gateway", "--config", str(config_file), "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(target) in result.stderr
    expected = "larger than" if kind == "oversized" else "regular file"
    assert expected in result.stderr, result.stderr


def test_the_audit_log_path_must_be_a_regular_file(tmp_path: Path) -> None:
    import os

    from appliance.gateway.audit import AuditLog, AuditLogError

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for path in (tmp_path / "fifo", tmp_path / "dir"):
        with pytest.raises(AuditLogError, match="regular file"):
            AuditLog(path, FakeClock())


def test_hostile_model_server_answers_give_no_usage_never_an_error() -> None:
    from appliance.gateway.upstream import SseTally, Usage, usage_from_body

    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"usage": ' + deep + b"}", b'{"usage": {"prompt_tokens": NaN}}',
                 b'{"usage": {"prompt_tokens": ' + b"9" * 4000 + b"}}", b"\xff"):  # fmt: skip
        usage = usage_from_body(body)
        assert (usage.tokens_in, usage.tokens_out) == (None, None)
        tally = SseTally()
        tally.feed(b"data: " + body + b"\n\n")
        assert tally.usage.tokens_in is None and tally.usage.tokens_out in (None, 1)
    huge = b'{"usage": {"prompt_tokens": 1' + b"0" * 100 + b', "completion_tokens": 3}}'
    assert usage_from_body(huge) == Usage(None, 3, "upstream")


def test_connection_summaries_are_bounded(tmp_path: Path) -> None:
    from appliance.gateway.audit import AuditLog
    from appliance.gateway.connections import ConnectionReport

    report, audit = ConnectionReport(), AuditLog(tmp_path / "audit.jsonl", FakeClock())
    for i in range(20_000):  # a flood from many addresses
        report.count("dropped", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    record = report.report(audit)
    assert record is not None and record["counts"] == {"dropped": 20_000}
    assert len(record["addresses"]) == 10 and record["untracked_events"] == 20_000 - 4096
    assert report.report(audit) is None  # nothing new: nothing written
    audit.close()
    assert len((tmp_path / "audit.jsonl").read_bytes()) < 1024


@pytest.mark.anyio
async def test_a_logged_prompt_is_bounded(
    site: Site, upstream: FakeUpstream, clock: FakeClock
) -> None:
    from tests.unit.gateway.conftest import open_gateway

    config = site.config(audit={"log_prompts": True, "max_prompt_bytes": 1024})
    gateway = await open_gateway(config, upstream, clock)
    try:
        small = [{"role": "user", "content": "hello"}]
        assert (await gateway.chat(site.token(), messages=small)).status_code == 200
        big = [{"role": "user", "content": "\u00e9" * 100_000}]
        assert (await gateway.chat(site.token(), messages=big)).status_code == 200
    finally:
        await gateway.client.aclose()
        await gateway.state.aclose()
    first, second = site.audit_records()[-2:]
    assert first["prompt"] == small
    assert isinstance(second["prompt"], str) and second["prompt"].endswith("...")
    assert len(json.dumps(second)) <= MAX_RECORD_BYTES + 1024
