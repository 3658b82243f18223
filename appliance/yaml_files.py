"""Read a YAML file for a strict schema: safe loading, duplicate keys refused, clear errors.

PyYAML silently keeps the last of two equal keys; a profile or recipe with a
key given twice is ambiguous, so it is refused with both line numbers. The
file is read through ``input_files.read_input`` (regular files only, bounded);
nesting is bounded (``MAX_YAML_DEPTH``), and aliases are allowed only while
the document they expand to stays small (``MAX_YAML_NODES``) and acyclic, so
an alias expansion bomb ("billion laughs"), a self-referencing alias or a
deeply nested document is a plain error, never memory blow-up or
``RecursionError``. Every failure is raised as
the caller's ``InputError`` subclass, naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from appliance.errors import InputError
from appliance.input_files import MAX_JSON_DEPTH, read_text_input
from appliance.schema_errors import format_validation_error

M = TypeVar("M", bound=BaseModel)

MAX_YAML_DEPTH = MAX_JSON_DEPTH
MAX_YAML_NODES = 200_000  # nodes after aliases are expanded; a recipe has a few hundred


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice and nesting past ``MAX_YAML_DEPTH``."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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
    return parse_yaml(read_text_input(path, what, error=error), str(path), error)


def parse_yaml(text: str, source: str, error: type[InputError] = InputError) -> Any:
    """Parsed YAML text (bounded depth, no aliases, no duplicate keys); ``source`` names it."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:
        raise error(f"{source}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{source}: not valid YAML{where}: {problem}") from exc
    finally:
        loader.dispose()


def _check_expansion(top: yaml.Node) -> None:
    """Refuse a node graph (aliases share nodes) that expands past ``MAX_YAML_NODES`` nodes or
    ``MAX_YAML_DEPTH`` levels, or refers to itself. Iterative: no recursion on hostile input."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(top, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_NODES or depth[key] > MAX_YAML_DEPTH:
                what = "nodes" if size[key] > MAX_YAML_NODES else "levels"
                limit = MAX_YAML_NODES if what == "nodes" else MAX_YAML_DEPTH
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases expand it past {limit} {what} (an alias expansion bomb?)",
                    node.start_mark,
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


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
