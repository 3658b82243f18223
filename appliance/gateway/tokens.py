"""Offline bearer-token validation: from an ``Authorization`` header to a ``Caller``, or a refusal.

The order is fixed and every step refuses with a typed ``Reason``:
1. header shape (``Bearer <token>``) and size, before any parsing;
2. JOSE header: ``alg`` must be one of the pinned asymmetric algorithms (so
   ``none`` and ``HS256``-with-the-public-key never reach a verifier), ``kid``
   must name a key of the realm's JWKS (one throttled refresh when unknown);
3. signature, by PyJWT with the key bound to that algorithm;
4. claims, only once the signature holds: issuer, audience, expiry, not-before,
   issued-at (not in the future, lifetime bounded), subject, client id; all
   times with the bounded leeway against the injected wall clock.
Nothing here logs a token. Verified tokens are remembered in memory (bounded)
so that a client's next call with the same token skips parsing and signature
verification, never the claim checks; see ``_verified_claims``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK
from jwt.exceptions import DecodeError, InvalidAlgorithmError, InvalidSignatureError, PyJWTError

from appliance.gateway.clock import Clock
from appliance.gateway.config import Tokens
from appliance.gateway.jwks import KeyStore
from appliance.gateway.reasons import Reason, RefusedError
from appliance.input_files import finite_number

# JWS compact serialisation: three base64url parts. An empty signature passes this
# shape check so that `alg: none` tokens are refused for their algorithm, by name.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# A time claim beyond this (year 5138) is no time at all (and would lose precision).
MAX_TIME_S = 1e11
VERIFIED_CACHE_SIZE = 4096  # tokens whose signature was verified (at most 8 KiB each)

_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    # Claims are checked below, against the injected clock and with typed reasons.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str
    client_id: str
    roles: frozenset[str]


def _shown(value: Any) -> str:
    """A claim from an unverified or foreign token, bounded for messages and the audit."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(claims: dict[str, Any], name: str) -> float | None:
    """A time claim as a finite number of seconds; anything else is a malformed token.

    PyJWT's own checks are off (they run against the injected clock here), and its JSON
    parser turns ``1e400`` into ``inf`` and accepts ``NaN``: an ``exp`` of ``NaN`` compares
    false with everything and would never expire. Booleans, strings, non-finite floats and
    integers too large for a float are refused here, by name.
    """
    value = claims.get(name)
    if value is None:
        return None
    if not finite_number(value):
        raise RefusedError(
            Reason.MALFORMED_TOKEN,
            f"claim {name} must be a finite number of seconds, found {_shown(value)}",
        )
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not abs(seconds) < MAX_TIME_S:
        raise RefusedError(
            Reason.MALFORMED_TOKEN,
            f"claim {name} is out of range ({_shown(value)}); expected seconds since 1970",
        )
    return seconds


class TokenValidator:
    def __init__(self, settings: Tokens, keys: KeyStore, clock: Clock) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self._verified: dict[str, tuple[dict[str, Any], str, str, PyJWK]] = {}

    async def caller(self, authorization: str | None) -> Caller:
        token = self._bearer(authorization)
        return self.check_claims(await self._verified_claims(token))

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        """The payload of a token whose signature verifies with a key the realm publishes now.

        A client sends the same token for its whole lifetime, so a verified
        signature is remembered (bounded, by the exact token string) for as long
        as the very key object that verified it is still in the key cache; a
        refresh replaces the key objects, so every remembered token is verified
        again against the new key set. Time claims are checked on every call.
        """
        await self.keys.freshen()
        remembered = self._verified.get(token)
        if remembered is not None:
            if self.keys.current(remembered[1], remembered[2]) is remembered[3]:
                return remembered[0]
            del self._verified[token]
        alg, kid = self._header(token)
        key = await self.keys.key(kid, alg)
        if key is None:
            if not self.keys.loaded:
                raise RefusedError(
                    Reason.KEYS_UNAVAILABLE,
                    f"the realm's signing keys cannot be loaded ({self.keys.last_error})",
                )
            if self.keys.knows_kid(kid):
                raise RefusedError(
                    Reason.ALGORITHM_NOT_ALLOWED, f"key {_shown(kid)} is not a key for {alg}"
                )
            raise RefusedError(
                Reason.UNKNOWN_KEY, f"key id {_shown(kid)} is not in the realm's key set"
            )
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options=_DECODE_OPTIONS)
        except InvalidSignatureError as exc:
            raise RefusedError(Reason.BAD_SIGNATURE, "the signature does not match") from exc
        except InvalidAlgorithmError as exc:
            raise RefusedError(Reason.ALGORITHM_NOT_ALLOWED, str(exc)) from exc
        except DecodeError as exc:
            raise RefusedError(Reason.MALFORMED_TOKEN, f"cannot decode the token: {exc}") from exc
        except PyJWTError as exc:
            raise RefusedError(Reason.BAD_SIGNATURE, f"{type(exc).__name__}: {exc}") from exc
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (claims, kid, alg, key)
        return claims

    def _bearer(self, authorization: str | None) -> str:
        if authorization is None or not authorization.strip():
            raise RefusedError(Reason.MISSING_TOKEN, "no Authorization header")
        limit = self.settings.max_token_bytes
        if len(authorization) > limit + len("Bearer "):
            raise RefusedError(
                Reason.TOKEN_TOO_LARGE,
                f"the Authorization header has {len(authorization)} characters; tokens up to {limit} bytes are accepted",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or " " in token.strip():
            raise RefusedError(Reason.MALFORMED_HEADER, "expected `Authorization: Bearer <token>`")
        return token.strip()

    def _header(self, token: str) -> tuple[str, str]:
        if not _COMPACT.fullmatch(token):
            raise RefusedError(
                Reason.MALFORMED_TOKEN, "not a signed JWT (expected three base64url parts)"
            )
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as exc:
            raise RefusedError(Reason.MALFORMED_TOKEN, f"unreadable JOSE header: {exc}") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise RefusedError(
                Reason.ALGORITHM_NOT_ALLOWED,
                f"algorithm {_shown(alg)} is not accepted; expected one of {', '.join(self.settings.algorithms)}",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise RefusedError(Reason.UNKNOWN_KEY, "the token header names no key id (kid)")
        return alg, kid

    def check_claims(self, claims: dict[str, Any]) -> Caller:
        s = self.settings
        if claims.get("iss") != s.issuer:
            raise RefusedError(
                Reason.WRONG_ISSUER,
                f"expected issuer {s.issuer!r}, found {_shown(claims.get('iss'))}",
            )
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if s.audience not in audiences:
            raise RefusedError(
                Reason.WRONG_AUDIENCE,
                f"expected audience {s.audience!r}, found {_shown(aud)}"
                " (Keycloak needs an audience mapper for the API client)",
            )
        now, leeway = self.clock.time(), s.leeway_s
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        if exp is None or iat is None:
            missing = "exp" if exp is None else "iat"
            raise RefusedError(Reason.MISSING_CLAIM, f"the token has no {missing} claim")
        if now >= exp + leeway:
            raise RefusedError(Reason.EXPIRED, f"expired {now - exp:.0f} s ago (leeway {leeway} s)")
        if nbf is not None and now + leeway < nbf:
            raise RefusedError(
                Reason.NOT_YET_VALID, f"not valid for another {nbf - now:.0f} s (leeway {leeway} s)"
            )
        if iat > now + leeway:
            raise RefusedError(
                Reason.ISSUED_IN_FUTURE,
                f"issued {iat - now:.0f} s in the future (leeway {leeway} s)",
            )
        if exp - iat > s.max_lifetime_s:
            raise RefusedError(
                Reason.LIFETIME_TOO_LONG,
                f"valid for {exp - iat:.0f} s; at most {s.max_lifetime_s} s is accepted",
            )
        subject, client_id = claims.get("sub"), claims.get(s.client_id_claim)
        if not isinstance(subject, str) or not subject:
            raise RefusedError(Reason.MISSING_CLAIM, "the token has no subject (sub)")
        if not isinstance(client_id, str) or not client_id:
            raise RefusedError(
                Reason.MISSING_CLAIM, f"the token has no client id ({s.client_id_claim})"
            )
        return Caller(subject, client_id, _roles(claims, s.roles_path))


def _roles(claims: dict[str, Any], path: tuple[str, ...]) -> frozenset[str]:
    node: Any = claims
    for name in path:
        node = node.get(name) if isinstance(node, dict) else None
    if not isinstance(node, list):
        return frozenset()
    return frozenset(r for r in node if isinstance(r, str))
