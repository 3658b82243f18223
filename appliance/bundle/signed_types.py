"""Exact JSON types of signed TUF metadata, checked before python-tuf reads it.

python-tuf takes ``true`` for a version or a threshold (a bool is an int in
Python), ``"2030-1-5T1:2:3Z"`` for an expiry (``strptime`` is lenient about
digits), a string for a role's key list, and keeps a float until canonical
JSON refuses it deep inside the signature check. Signed bytes must mean one
thing, so this module checks, on the parsed JSON of roots and manifests:

- no float anywhere in the signed part (canonical JSON, which the signatures
  cover, has none, so a float could never have been signed);
- ``_type``, ``spec_version`` strings; ``version`` an integer (not a boolean);
  ``expires`` a string of exactly the form ``YYYY-MM-DDTHH:MM:SSZ`` naming a
  real instant;
- roots: ``keys`` an object of objects whose ``keytype``, ``scheme`` are
  strings and ``keyval`` an object; ``roles`` an object of objects with
  ``keyids`` an array of strings and ``threshold`` an integer;
  ``consistent_snapshot`` a boolean when present;
- manifests: ``targets`` an object of objects with ``length`` an integer and
  ``hashes`` an object of strings (``shard_size``/``shards`` and the payload
  are checked by ``manifest.py`` and the payload's strict schema).

Every refusal is a ``MetadataError`` naming the field, the type found and the
type expected. Meaning (ranges, keys that exist, thresholds that can be met)
is checked after parsing, by ``trust.py`` and ``manifest.py``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from appliance.errors import MetadataError

_EXPIRES = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")
EXPIRES_FORM = "YYYY-MM-DDTHH:MM:SSZ"


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as messages show it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number with a fraction or exponent"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_EXPECTED = {
    int: "an integer",
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def _is(value: Any, kind: type) -> bool:
    # bool is a subclass of int in Python; in signed metadata they are different types.
    if kind is int:
        return type(value) is int
    return isinstance(value, kind)


def _field(parent: dict[str, Any], key: str, kind: type, where: str, what: str) -> Any:
    field = f"{where}.{key}"
    if key not in parent:
        raise MetadataError(f"{what}: field `{field}` is missing (expected {_EXPECTED[kind]})")
    value = parent[key]
    if not _is(value, kind):
        raise MetadataError(
            f"{what}: field `{field}` has type {json_type(value)}, expected {_EXPECTED[kind]}"
        )
    return value


def _has_float(value: Any) -> bool:
    """Whether any value under ``value`` is a float (iterative: manifests list up to 10^6 files)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return False


def _float_path(value: Any) -> list[str] | None:
    """The path to the first float under ``value``, or None (built only when one is found)."""
    if isinstance(value, float):
        return []
    if isinstance(value, dict):
        for key, item in value.items():
            found = _float_path(item)
            if found is not None:
                return [f".{key}", *found]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _float_path(item)
            if found is not None:
                return [f"[{index}]", *found]
    return None


def check_signed_types(document: Any, what: str) -> None:
    """Refuse a root or manifest whose signed fields are not exactly of their types."""
    if not isinstance(document, dict):
        raise MetadataError(
            f"{what}: expected a JSON object with `signed` and `signatures`, found {json_type(document)}"
        )
    signed = _field(document, "signed", dict, "", what)
    found = _float_path(signed) if _has_float(signed) else None
    if found is not None:
        raise MetadataError(
            f"{what}: field `signed{''.join(found)}` has type {json_type(0.5)}, expected an integer "
            "or a string (signed metadata is canonical JSON, which has no such numbers)"
        )
    kind = _field(signed, "_type", str, "signed", what)
    _field(signed, "spec_version", str, "signed", what)
    _field(signed, "version", int, "signed", what)
    _check_expires(_field(signed, "expires", str, "signed", what), what)
    if kind == "root":
        _check_root(signed, what)
    elif kind == "targets":
        _check_targets(signed, what)


def _check_expires(text: str, what: str) -> None:
    problem = None
    if not _EXPIRES.match(text):
        problem = f"is not of the form {EXPIRES_FORM}"
    else:
        try:
            datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            problem = "is not a real date and time"
    if problem is not None:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise MetadataError(
            f"{what}: field `signed.expires` {problem}: found {shown!r}, expected a date such as "
            "2030-01-31T00:00:00Z (UTC)"
        )


def _check_root(signed: dict[str, Any], what: str) -> None:
    keys = _field(signed, "keys", dict, "signed", what)
    for keyid, key in keys.items():
        where = f"signed.keys[{keyid[:16]!r}]"
        if not isinstance(key, dict):
            raise MetadataError(
                f"{what}: field `{where}` has type {json_type(key)}, expected an object"
            )
        _field(key, "keytype", str, where, what)
        _field(key, "scheme", str, where, what)
        _field(key, "keyval", dict, where, what)
    roles = _field(signed, "roles", dict, "signed", what)
    for name, role in roles.items():
        where = f"signed.roles.{name}"
        if not isinstance(role, dict):
            raise MetadataError(
                f"{what}: field `{where}` has type {json_type(role)}, expected an object"
            )
        keyids = _field(role, "keyids", list, where, what)
        for index, keyid in enumerate(keyids):
            if not isinstance(keyid, str):
                raise MetadataError(
                    f"{what}: field `{where}.keyids[{index}]` has type {json_type(keyid)}, expected a string"
                )
        _field(role, "threshold", int, where, what)
    if "consistent_snapshot" in signed:
        _field(signed, "consistent_snapshot", bool, "signed", what)


def _check_targets(signed: dict[str, Any], what: str) -> None:
    targets = _field(signed, "targets", dict, "signed", what)
    for path, target in targets.items():
        where = f"signed.targets[{path!r}]"
        if not isinstance(target, dict):
            raise MetadataError(
                f"{what}: field `{where}` has type {json_type(target)}, expected an object"
            )
        _field(target, "length", int, where, what)
        hashes = _field(target, "hashes", dict, where, what)
        for name, digest in hashes.items():
            if not isinstance(digest, str):
                raise MetadataError(
                    f"{what}: field `{where}.hashes.{name}` has type {json_type(digest)}, expected a string"
                )
