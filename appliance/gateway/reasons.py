"""Why the gateway refused a call: one enum, used for the HTTP status, the error body and the audit.

Each value is the stable word written to the audit log (``reason``) and sent as
the OpenAI-style error ``code``; scripts and auditors may match on it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from appliance.errors import ApplianceError


class Reason(StrEnum):
    # 401: no usable credential
    MISSING_TOKEN = "missing_token"
    MALFORMED_HEADER = "malformed_header"  # Authorization is not "Bearer <token>"
    TOKEN_TOO_LARGE = "token_too_large"
    MALFORMED_TOKEN = "malformed_token"  # not a JWS compact serialisation / bad JSON
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"  # none, HS*, or not the pinned list
    UNKNOWN_KEY = "unknown_key"  # kid not in the realm's JWKS, even after a refresh
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # nbf in the future
    ISSUED_IN_FUTURE = "issued_in_future"  # iat in the future
    LIFETIME_TOO_LONG = "lifetime_too_long"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    MISSING_CLAIM = "missing_claim"
    # 503: the gateway cannot judge any token (no signing key could ever be loaded)
    KEYS_UNAVAILABLE = "keys_unavailable"
    # 403: valid caller, not allowed this
    MODEL_NOT_ALLOWED = "model_not_allowed"
    # other refusals
    RATE_LIMITED = "rate_limited"  # 429
    BODY_TOO_LARGE = "body_too_large"  # 413
    BODY_TIMEOUT = "body_timeout"  # 408: the body did not arrive within limits.body_timeout_s
    HEADER_TIMEOUT = "header_timeout"  # 408: headers not complete within limits.header_timeout_s
    TOO_MANY_CONNECTIONS = "too_many_connections"  # 503: over a connection cap (health only)
    BAD_REQUEST = "bad_request"  # 400: body not a JSON object, no model
    NOT_FOUND = "not_found"  # 404
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # 502
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504
    GROUP_UNAVAILABLE = "group_unavailable"  # 503: the multi-node group is not serving
    UPSTREAM_ERROR = "upstream_error"  # the model server's own non-2xx answer, passed through
    INTERNAL_ERROR = "internal_error"  # 500: a bug in the gateway
    # recorded, not sent: the client left (while sending its body, or mid-stream)
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_STREAM_BROKEN = "upstream_stream_broken"

    @property
    def is_token_problem(self) -> bool:
        """A 401: the response carries ``WWW-Authenticate: Bearer ...``."""
        return self.status == 401

    @property
    def status(self) -> int:
        return _STATUS.get(self, 401)

    @property
    def error_type(self) -> str:
        """The OpenAI error ``type`` for this refusal."""
        return _TYPE.get(self.status, "authentication_error")


_STATUS = {
    Reason.MODEL_NOT_ALLOWED: 403,
    Reason.RATE_LIMITED: 429,
    Reason.BODY_TOO_LARGE: 413,
    Reason.BODY_TIMEOUT: 408,
    Reason.HEADER_TIMEOUT: 408,
    Reason.TOO_MANY_CONNECTIONS: 503,
    Reason.BAD_REQUEST: 400,
    Reason.NOT_FOUND: 404,
    Reason.METHOD_NOT_ALLOWED: 405,
    Reason.UPSTREAM_UNAVAILABLE: 502,
    Reason.UPSTREAM_TIMEOUT: 504,
    Reason.KEYS_UNAVAILABLE: 503,
    Reason.GROUP_UNAVAILABLE: 503,
    Reason.UPSTREAM_ERROR: 502,  # nominal: the response keeps the model server's status
    Reason.INTERNAL_ERROR: 500,
    # 499 (nginx's "client closed request") is never sent, only recorded; after a
    # stream has started, the record keeps the 200 that was sent.
    Reason.CLIENT_DISCONNECTED: 499,
    Reason.UPSTREAM_STREAM_BROKEN: 200,
}

_TYPE = {
    499: "invalid_request_error",
    403: "permission_error",
    429: "rate_limit_error",
    413: "invalid_request_error",
    408: "invalid_request_error",
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    502: "upstream_error",
    504: "upstream_error",
    503: "server_error",
    500: "server_error",
}


def error_body(reason: Reason, message: str) -> dict[str, Any]:
    """The OpenAI-style error document of a refusal."""
    return {"error": {"message": message, "type": reason.error_type, "code": reason.value}}


class RefusedError(ApplianceError):
    """A call refused for ``reason``; ``detail`` says what was expected and found (never a secret).

    Always answered over HTTP (``calls.Gateway.refusal``), never raised to a command line:
    it keeps the root's exit code (``INTERNAL``), which would mean a bug.
    """

    def __init__(self, reason: Reason, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after  # seconds, for 429
