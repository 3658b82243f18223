"""The realm's signing keys (JWKS), cached in memory and refreshed without storms.

Sources sit behind a small ABC: a file saved on site, the realm's certs URL on
the internal network (fetched with httpx), or both (URL first, file when the URL
does not answer). The cache:
- keeps only signature keys usable with the pinned algorithms: ``use: enc``
  keys (Keycloak lists an RSA-OAEP one), symmetric ``oct`` keys and keys for
  other algorithms are dropped, so no token can pick them;
- is refreshed when a token names an unknown ``kid`` and when it is older than
  ``max_age``, but never more often than once per ``refresh_interval``
  (a flood of tokens with invented key ids costs one fetch per interval);
- is replaced whole on a successful refresh (a key the realm rotated out is
  gone), and kept as it was when a refresh fails.
A key set is read bounded whatever its source (``MAX_JWKS_BYTES``; a file through
``input_files.read_input``: a FIFO or directory is refused, never waited on) and
parsed strictly (``input_files.parse_json``: nesting, duplicate keys, NaN refused).
"""

from __future__ import annotations

import logging
import ssl
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from appliance.errors import InputError
from appliance.gateway.clock import Clock
from appliance.input_files import parse_json, read_input, read_text_input

log = logging.getLogger("appliance.gateway")

MAX_JWKS_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
FETCH_TIMEOUT_S = 5.0

_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}


class JwksError(InputError):
    """The realm's key set cannot be read or holds no usable signing key."""


class JwksSource(ABC):
    """Where the key set comes from; ``fetch`` returns its raw JSON bytes."""

    description: str

    @abstractmethod
    async def fetch(self) -> bytes: ...


class FileJwksSource(JwksSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"

    async def fetch(self) -> bytes:
        return read_input(self.path, "JWKS file", limit=MAX_JWKS_BYTES, error=JwksError)


class UrlJwksSource(JwksSource):
    def __init__(self, url: str, *, ca_file: Path | None = None, transport: Any = None) -> None:
        self.url = url
        self.ca_file = ca_file
        self.transport = transport  # an httpx transport, for tests
        self.description = f"URL {url}"

    async def fetch(self) -> bytes:
        import httpx  # lazily: httpx loads click and rich

        verify: Any = True
        if self.ca_file is not None:
            # Read first: OpenSSL would block for ever on a FIFO given as the CA file.
            pem = read_text_input(self.ca_file, "JWKS CA file", error=JwksError)
            try:
                verify = ssl.create_default_context(cadata=pem)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise JwksError(f"cannot load the CA file {self.ca_file}: {exc}") from exc
        try:
            async with (
                httpx.AsyncClient(
                    verify=verify,
                    timeout=FETCH_TIMEOUT_S,
                    transport=self.transport,
                    trust_env=False,
                ) as client,
                client.stream("GET", self.url, headers={"accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise JwksError(f"{self.url} answered HTTP {response.status_code}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_JWKS_BYTES:
                        raise JwksError(f"{self.url} sent more than {MAX_JWKS_BYTES} bytes")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise JwksError(f"cannot fetch {self.url}: {type(exc).__name__}: {exc}") from exc


class FirstAnswering(JwksSource):
    """Try each source in order; the first that answers wins."""

    def __init__(self, sources: Sequence[JwksSource]) -> None:
        self.sources = tuple(sources)
        self.description = " or ".join(s.description for s in self.sources)

    async def fetch(self) -> bytes:
        problems = []
        for source in self.sources:
            try:
                return await source.fetch()
            except JwksError as exc:
                problems.append(exc.message)
        raise JwksError("; ".join(problems))


def parse_jwks(data: bytes, algorithms: Sequence[str]) -> dict[tuple[str, str], PyJWK]:
    """Usable signature keys by (kid, algorithm); raises ``JwksError`` if there are none."""
    document = parse_json(data, "the key set", error=JwksError)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('the key set has no "keys" array')
    keys: dict[tuple[str, str], PyJWK] = {}
    for entry in entries:
        for alg, key in _usable(entry, algorithms):
            keys[(entry["kid"], alg)] = key
    if not keys:
        raise JwksError(
            f"the key set ({len(entries)} keys) holds no signature key for {', '.join(algorithms)}"
        )
    return keys


def _usable(entry: Any, algorithms: Sequence[str]) -> list[tuple[str, PyJWK]]:
    if not isinstance(entry, dict):
        return []
    kty, kid = entry.get("kty"), entry.get("kid")
    if kty not in _FAMILY or not isinstance(kid, str) or not kid:
        return []  # symmetric (oct) or unknown key types never verify anything here
    if entry.get("use", "sig") != "sig":
        return []
    declared = entry.get("alg")
    if declared is not None:
        candidates = [declared] if declared in algorithms else []
    else:
        candidates = [a for a in algorithms if a.startswith(_FAMILY[kty])]
    found = []
    for alg in candidates:
        try:
            key = PyJWK(entry, algorithm=alg)
        except PyJWTError:
            continue  # wrong curve for ES384, malformed numbers, ...
        if isinstance(key.key, RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
            continue
        found.append((alg, key))
    return found


class KeyStore:
    """The in-memory key cache (see the module docstring for the refresh rules)."""

    def __init__(
        self,
        source: JwksSource,
        algorithms: Sequence[str],
        clock: Clock,
        *,
        refresh_interval_s: float,
        max_age_s: float,
    ) -> None:
        self.source = source
        self.algorithms = tuple(algorithms)
        self.clock = clock
        self.refresh_interval_s = refresh_interval_s
        self.max_age_s = max_age_s
        self._keys: Mapping[tuple[str, str], PyJWK] = {}
        self._loaded_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = anyio.Lock()
        self.fetches = 0  # attempts, successful or not (tests and /healthz-free metrics)
        self.last_error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(kid for kid, _ in self._keys)

    async def key(self, kid: str, alg: str) -> PyJWK | None:
        """The key for ``kid`` and ``alg``, refreshing (throttled) when unknown or stale."""
        await self.freshen()
        found = self._keys.get((kid, alg))
        if found is None:
            await self.refresh()
            found = self._keys.get((kid, alg))
        return found

    async def freshen(self) -> None:
        """Refresh (throttled) if the keys were never loaded or are older than ``max_age``."""
        loaded = self._loaded_at
        if loaded is None or self.clock.monotonic() - loaded > self.max_age_s:
            await self.refresh()

    def current(self, kid: str, alg: str) -> PyJWK | None:
        """The key as cached now, without any refresh."""
        return self._keys.get((kid, alg))

    def knows_kid(self, kid: str) -> bool:
        return any(k == kid for k, _ in self._keys)

    async def refresh(self) -> bool:
        """Fetch the key set unless one was fetched less than ``refresh_interval`` ago."""
        if not self._due():
            return False
        async with self._lock:
            if not self._due():  # another request refreshed while this one waited
                return False
            self._last_attempt = self.clock.monotonic()
            self.fetches += 1
            try:
                keys = parse_jwks(await self.source.fetch(), self.algorithms)
            except JwksError as exc:
                self.last_error = exc.message
                log.warning("JWKS refresh from %s failed: %s", self.source.description, exc.message)
                return False
            self._keys = keys
            self._loaded_at = self.clock.monotonic()
            self.last_error = None
            log.info("JWKS: %d key(s) from %s", len(keys), self.source.description)
            return True

    def _due(self) -> bool:
        last = self._last_attempt
        return last is None or self.clock.monotonic() - last >= self.refresh_interval_s
