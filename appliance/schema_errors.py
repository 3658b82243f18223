"""Turn pydantic validation errors into lines an operator can act on.

One formatter for every strict file format (hardware profiles are pydantic
models, saved facts are stdlib dataclasses validated by pydantic): each
problem says where (``engine.gpu_memory_utilization``, ``[1].cpu.flags``),
what was expected and what was found; an unknown key gets a "did you mean"
from the keys allowed at that place.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

_EXPECTED_TYPE = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "a boolean",
    "tuple_type": "an array",
    "list_type": "an array",
    "dataclass_type": "an object",
    "model_type": "a mapping",
    "dict_type": "an object",
}


def describe_errors(exc: ValidationError, root: type, prefix: str = "") -> list[str]:
    """One sentence per problem; ``prefix`` locates the document inside a larger one (``[1]``)."""
    return [_describe(error, root, prefix) for error in exc.errors()]


def format_validation_error(exc: ValidationError, root: type, prefix: str = "") -> str:
    return "\n".join(f"  - {line}" for line in describe_errors(exc, root, prefix))


def describe_value(value: Any) -> str:
    """A JSON/YAML value as an error message shows it: its type and a short rendering."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(shown)}"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _describe(error: Any, root: type, prefix: str) -> str:
    path, classes = _walk(root, list(error["loc"]))
    where = _format_path(path, prefix)
    kind = error["type"]
    found = describe_value(error.get("input"))
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = list(_fields(classes[0])) if len(classes) == 1 else []
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        listed = ", ".join(allowed) if allowed else "none"
        return f"unknown key `{where}`{hint} (keys allowed here: {listed})"
    if kind == "missing":
        return f"missing required key `{where}`"
    if kind in _EXPECTED_TYPE:
        return f"`{where}` has the wrong type: expected {_EXPECTED_TYPE[kind]}, found {found}"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "?")
        return f"`{where}` has an unknown value: expected one of {allowed}, found {found}"
    message = str(error["msg"]).removeprefix("Value error, ")
    # A rule over a whole section names the values it compared itself.
    shown = "" if isinstance(error.get("input"), dict) else f"; found {found}"
    return f"`{where}`: {message}{shown}" if path else f"{message}{shown}"


def _walk(root: type, loc: list[int | str]) -> tuple[list[int | str], list[type]]:
    """Follow ``loc`` through the classes: the user-visible path, and the classes of its parent.

    pydantic puts union member tags (a discriminator value, or a member's name)
    into locations; a tag picks the member and is not part of the user's file.
    """
    path: list[int | str] = []
    classes: list[type] = [root]
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(part, int):
            path.append(part)
            continue
        owner = next((c for c in classes if part in _fields(c)), None)
        if owner is not None or last:
            path.append(part)
            if owner is not None and not last:
                classes = _classes_in(_fields(owner)[part])
            continue
        classes = [c for c in classes if _is_member(c, part)] or classes
    return path, classes


def _fields(cls: type) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: field.annotation for name, field in cls.model_fields.items()}
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return {}


def _classes_in(annotation: Any) -> list[type]:
    """Models and dataclasses inside an annotation (through unions, tuples, Annotated)."""
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return [annotation]
    return [cls for arg in typing.get_args(annotation) for cls in _classes_in(arg)]


def _is_member(cls: type, tag: str) -> bool:
    kind = _fields(cls).get("kind")
    return tag == cls.__name__ or (kind is not None and tag in typing.get_args(kind))


def _format_path(path: list[int | str], prefix: str) -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(whole file)"
