"""Turn pydantic validation errors into lines an operator can act on.

Shared by every strict file format (profiles, and later recipes and
inventories): each problem says where (``engine.gpu_memory_utilization``),
what was expected and what was found; an unknown key gets a "did you mean"
from the keys allowed at that place.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, get_args

from pydantic import BaseModel, ValidationError


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    lines = []
    for error in exc.errors():
        path, models = _walk(root, list(error["loc"]))
        where = _format_path(path) or "(whole file)"
        if error["type"] == "extra_forbidden":
            parent = models[0] if len(models) == 1 else None
            allowed = sorted(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  - {where}: unknown key{hint}; allowed here: {', '.join(allowed)}")
        elif error["type"] == "missing":
            lines.append(f"  - {where}: required key is missing")
        else:
            found = error.get("input")
            message = error["msg"].removeprefix("Value error, ")
            # A rule over a whole section already names the values it compared.
            shown = "" if isinstance(found, dict) else f" (found: {json.dumps(found, default=str)})"
            lines.append(f"  - {where}: {message}{shown}")
    return "\n".join(lines)


def _walk(
    root: type[BaseModel], loc: list[int | str]
) -> tuple[list[int | str], list[type[BaseModel]]]:
    """Follow ``loc`` through the models: the user-visible path and the models of its parent.

    pydantic puts a discriminated union's tag (``engine.vllm.port``) into the
    location; the tag picks the union member and is not part of the user's file.
    """
    path: list[int | str] = []
    candidates: list[type[BaseModel]] = [root]
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(part, int):
            path.append(part)
            continue
        owner = next((m for m in candidates if part in m.model_fields), None)
        if owner is not None or last:
            path.append(part)
            if not last and owner is not None:
                candidates = _models_in(owner.model_fields[part].annotation)
            continue
        candidates = [m for m in candidates if _has_tag(m, part)]  # a union tag
    return path, candidates


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _has_tag(model: type[BaseModel], tag: str) -> bool:
    kind = model.model_fields.get("kind")
    return kind is not None and tag in get_args(kind.annotation)


def _format_path(path: list[int | str]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
