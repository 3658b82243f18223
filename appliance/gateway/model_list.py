"""``GET /v1/models`` through the gateway: the model server's list, cut to what one caller may call.

Invariants:
- an entry is listed only when the model server lists it, the config's ``served``
  knows it and a role of the caller grants it; an upstream entry the config does not
  know is dropped, and a name listed twice upstream is listed once;
- every listed entry carries ``parent`` from the config, whatever the model server
  said: the base model's served name for a LoRA adapter, null for a base model. An
  adapter granted without its base model is listed with its parent all the same
  (the caller may call the adapter, not the base);
- the model server's answer is parsed strictly and bounded (``MAX_MODELS_BYTES``);
  one it cannot have meant is ``upstream_error``, never passed on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.gateway.config import Served
from appliance.gateway.reasons import Reason, RefusedError
from appliance.gateway.upstream import UpstreamAnswerError
from appliance.input_files import parse_json

if TYPE_CHECKING:
    import httpx

MAX_MODELS_BYTES = 4 * 1024 * 1024


def parse_model_list(upstream: httpx.Response) -> list[Any]:
    """The ``data`` array of the model server's ``/v1/models`` answer (already read)."""
    if upstream.status_code != 200 or len(upstream.content) > MAX_MODELS_BYTES:
        raise RefusedError(
            Reason.UPSTREAM_ERROR,
            f"the model server answered HTTP {upstream.status_code} to /v1/models",
        )
    try:
        listing = parse_json(upstream.content, "the model list", error=UpstreamAnswerError)
    except UpstreamAnswerError as exc:
        raise RefusedError(
            Reason.UPSTREAM_ERROR, f"the model server's model list is unusable: {exc.message}"
        ) from exc
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise RefusedError(Reason.UPSTREAM_ERROR, "the model server's model list has no data array")
    return data


def visible_models(
    entries: list[Any], served: Served, allowed: frozenset[str]
) -> list[dict[str, Any]]:
    """The entries of ``entries`` the caller may call (``allowed``), each with its ``parent``.

    vLLM's ``root`` (where the model or adapter lies on the host) is left out: callers
    choose by ``id``, and the host's paths are not theirs to see."""
    listed: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("id")
        if not isinstance(name, str) or name in seen or name not in allowed:
            continue
        base, adapter = served.resolve(name)
        if base is None:
            continue  # the model server serves it, the config does not know it
        seen.add(name)
        shown = {k: v for k, v in entry.items() if k != "root"}
        listed.append({**shown, "parent": base if adapter is not None else None})
    return listed
