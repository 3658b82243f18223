"""Read a YAML file for a strict schema: safe loading, duplicate keys refused, clear errors.

PyYAML silently keeps the last of two equal keys; a profile or recipe with a
key given twice is ambiguous, so it is refused with both line numbers. Every
failure is raised as the caller's ``InputError`` subclass, naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from appliance.errors import InputError
from appliance.schema_errors import format_validation_error

M = TypeVar("M", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            first = seen[key].start_mark
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first given at line {first.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path, what: str, error: type[InputError] = InputError) -> Any:
    """Parsed YAML of ``path``; ``what`` names the kind of file in messages ("recipe", "profile")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path}: not valid YAML{where}: {problem}") from exc


def load_model(
    path: Path, model: type[M], what: str, error: type[InputError], *, expected: str, doc: str
) -> M:
    """A YAML file validated into a strict ``model``; every problem as ``error`` naming the file.

    ``expected`` says what the top level should hold ("schema_version and hosts");
    ``doc`` where the format is documented.
    """
    data = load_yaml(path, what, error)
    return validate_model(data, model, what, error, source=str(path), expected=expected, doc=doc)


def validate_model(
    data: Any,
    model: type[M],
    what: str,
    error: type[InputError],
    *,
    source: str,
    expected: str,
    doc: str,
) -> M:
    """Parsed YAML or JSON from ``source`` validated into ``model``; every problem in one ``error``."""
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise error(f"{source}: expected a YAML mapping with {expected}; found {found}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(
            f"{source}: invalid {what}:\n{format_validation_error(exc, model)}",
            hint=f"The format is documented in {doc}.",
        ) from exc
