"""The smoke test: ask a deployed model server one question from this machine.

The model server listens on its host's loopback only, so the request goes
through an SSH tunnel (the inventory's user, key and pinned host key), the same
way an operator reaches it without the gateway; ``chat_through_gateway`` asks
through the gateway, with a token, as a site's caller does. Used by ``make
demo``, the TUI's Done screen and the end-to-end test; every wait is bounded.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.deploy.transport import ssh_options
from appliance.errors import DeploymentError
from appliance.input_files import parse_json
from appliance.plan.inventory import HostEntry

PROMPT = "In one sentence: why run a language model on premises?"


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    text: str
    model: str
    completion_tokens: int
    endpoint: str  # where the server listens, as seen on its host


def free_port() -> int:
    """A free TCP port on this machine's loopback (for a tunnel or a local listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tunnel(host: HostEntry, port: int, *, timeout: float = 20) -> Iterator[str]:
    """Forward a free local port to ``127.0.0.1:port`` on ``host``; yields the local base URL."""
    local = free_port()
    argv = [*ssh_options(host), "-N", "-o", "ExitOnForwardFailure=yes",
            "-L", f"{local}:127.0.0.1:{port}", f"{host.ssh.user}@{host.address}"]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                detail = (process.stderr.read() if process.stderr else "").strip().splitlines()[-1:]
                raise DeploymentError(
                    f"{host.name}: the SSH tunnel to port {port} failed: {' '.join(detail) or 'ssh exited'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"{host.name}: the SSH tunnel to port {port} did not open within {timeout:g} s"
                    ) from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chat(
    host: HostEntry,
    *,
    port: int,
    model: str | None = None,
    prompt: str = PROMPT,
    max_tokens: int = 48,
    timeout: float = 120,
) -> ChatAnswer:
    """One chat completion from the server on ``host``'s ``127.0.0.1:port``.

    ``model`` defaults to the first model the server lists on ``/v1/models``.
    """
    import httpx  # here, not at the top: httpx pulls in click and rich, which the core never loads

    endpoint = f"http://127.0.0.1:{port}/v1 on {host.name} ({host.address})"
    with tunnel(host, port) as base, httpx.Client(base_url=base, timeout=timeout) as client:
        try:
            if model is None:
                listed = client.get("/v1/models")
                listed.raise_for_status()
                model = str(listed.json()["data"][0]["id"])
            response = client.post(
                "/v1/chat/completions",
                json={"model": model, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": prompt}]},
            )  # fmt: skip
            response.raise_for_status()
            data = response.json()
            text = str(data["choices"][0]["message"]["content"] or "")
            tokens = int(data.get("usage", {}).get("completion_tokens", 0))
        except httpx.HTTPError as exc:
            raise DeploymentError(f"{host.name}: the smoke test request failed: {exc}") from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DeploymentError(
                f"{host.name}: the model server's answer is not an OpenAI-style chat completion ({exc!r})"
            ) from exc
    if not text.strip():
        raise DeploymentError(f"{host.name}: the model answered with an empty message")
    return ChatAnswer(text=text, model=model, completion_tokens=tokens, endpoint=endpoint)


def chat_through_gateway(
    url: str,
    token: str,
    cafile: Path,
    *,
    model: str,
    prompt: str = PROMPT,
    max_tokens: int = 48,
    timeout: float = 120,
) -> ChatAnswer:
    """One streamed chat completion through the gateway at ``url`` (``https://ADDR:8443``).

    The gateway's certificate is checked against ``cafile`` (the host's own
    certificate, read over SSH, or the site CA's). The answer is read event by
    event, as a client of the streaming API would.
    """
    import httpx

    text, chunks = [], 0
    try:
        with (
            httpx.Client(base_url=url, timeout=timeout, verify=_tls_context(cafile)) as client,
            client.stream(
                "POST",
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": model, "max_tokens": max_tokens, "stream": True,
                      "messages": [{"role": "user", "content": prompt}]},
            ) as response,
        ):  # fmt: skip
            if response.status_code != 200:
                response.read()
                raise DeploymentError(
                    f"the gateway at {url} refused the chat: {response.status_code} {response.text[:300]}"
                )
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                event = parse_json(
                    line.removeprefix("data:"), "a streamed event", error=DeploymentError
                )
                delta = event["choices"][0].get("delta", {})
                text.append(delta.get("content") or "")
                chunks += 1
    except httpx.HTTPError as exc:
        raise DeploymentError(f"the chat through the gateway at {url} failed: {exc}") from exc
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DeploymentError(
            f"the gateway's stream is not OpenAI-style chat completion chunks ({exc!r})"
        ) from exc
    answer = "".join(text)
    if not answer.strip():
        raise DeploymentError(f"the model behind {url} answered with an empty message")
    return ChatAnswer(text=answer, model=model, completion_tokens=chunks, endpoint=f"{url}/v1")


def _tls_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))
