"""Read an adapter's model card into its transparency record (docs/transparency-cards.md).

The card is the Hugging Face form: optional YAML front matter (``base_model``,
``base_model_revision``, ``license``/``license_name``, ...) and Markdown sections
numbered as the AI Office template numbers them, with ``| Field | Value |``
tables, row tables and checkbox answers. The section and field vocabulary is
``card_format``'s, shared with the writer (``export``); each cell is read by
``card_values``. This module finds the front matter, the sections and their
tables and lists, and assembles the record.

Invariants:
- Never guessed: a field the card leaves out is ``None`` (not stated); a field
  answered in a way this reader cannot read is a ``CardProblem`` naming the
  template's field, and the record leaves it not stated. Of the fields the
  record requires (provider name, versioned model name, a modality), one missing
  or unreadable is a problem and leaves ``record`` ``None``.
- A field name a known section does not have is a problem (a misspelt field must
  not become "not stated" silently); sections this reader does not know are
  ignored with all they hold.
- Bounded: a card over ``MAX_CARD_BYTES`` is refused (``CardError``); the front
  matter goes through the project's bounded YAML loader (an alias bomb or deep
  nesting is a problem, never a hang); the Markdown is read line by line
  without recursion and with regular expressions that do not backtrack.
- ``require_record`` is the one gate for a build: the record, or a ``CardError``
  listing every problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.compliance.card_format import (
    HF_LICENCES,
    LICENSE_NAME,
    LICENSE_REF,
    LONG_MAX,
    SECTION_BY_NUMBER,
    SECTION_BY_TITLE,
    SECTIONS,
    SHORT_MAX,
    ColumnSpec,
    RowsSpec,
    SectionSpec,
    is_not_stated_text,
    normalise,
)
from appliance.compliance.card_values import (
    Chars,
    Unreadable,
    bounded,
    described,
    field_value,
    lex,
    not_stated,
    records,
    shown,
    split,
    strip,
    text_of,
)
from appliance.compliance.record import TransparencyRecord
from appliance.errors import InputError
from appliance.input_files import MiB, decode_utf8, read_input
from appliance.yaml_files import parse_yaml

MAX_CARD_BYTES = 1 * MiB
DOC = "docs/transparency-cards.md"


class CardError(InputError):
    """A model card cannot be read, or cannot be read into a transparency record."""


@dataclass(frozen=True)
class CardProblem:
    """One field of the card that could not be read: the template's field name (with its
    section number), what the card gave, what was expected."""

    field: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"{self.field}: found {self.found}; expected {self.expected}"


@dataclass(frozen=True)
class CardImport:
    """What a card gave: the record (``None`` when a required field is missing or unreadable),
    every problem, and the front matter as it was written."""

    record: TransparencyRecord | None
    problems: tuple[CardProblem, ...]
    front_matter: dict[str, Any]


def load_card(path: Path) -> CardImport:
    """Read the card at ``path`` (a regular file of at most 1 MiB, UTF-8 with or without BOM)."""
    data = read_input(path, "model card", limit=MAX_CARD_BYTES, error=CardError)
    return parse_card(decode_utf8(data, path, "model card", CardError), str(path))


def require_record(imported: CardImport, source: str) -> TransparencyRecord:
    """The record of a card without problems; otherwise a ``CardError`` listing every problem."""
    if imported.record is not None and not imported.problems:
        return imported.record
    problems = imported.problems or (
        CardProblem("Card", "no record", "the three required fields (1.1, 1.2, 1.3)"),
    )
    listed = "\n".join(f"  - {p}" for p in problems)
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    raise CardError(
        f"{source}: the model card cannot be read into a transparency record ({count}):\n{listed}",
        hint=f"Fix the card (its format is documented in {DOC}) and build again.",
    )


def parse_card(text: str, source: str) -> CardImport:
    """Read a card's text; ``source`` names it in messages. Raises ``CardError`` only for a
    text over the size bound; everything else the card gets wrong is in ``problems``."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_CARD_BYTES:
        raise CardError(
            f"{source}: the model card is larger than {MAX_CARD_BYTES} bytes ({size}); "
            "refusing to read it",
            hint="Is this the right file? A model card is never that large.",
        )
    return _Reader(source).read(text)


# --- The Markdown -----------------------------------------------------------------------------

_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_NUMBERED = re.compile(r"(\d{1,3}(?:\.\d{1,3}){0,3})\.?(?:[ \t]+(.*))?", re.DOTALL)
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_BULLET = re.compile(r" {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?")
_ALIGNMENT = re.compile(r":?-+:?")
_COMMENT = re.compile(r"\\.|<!--.*?-->|<!--", re.DOTALL)


@dataclass
class _Block:
    """A section of the card: its spec (None: a section this reader ignores) and its lines."""

    spec: SectionSpec | None
    lines: list[str]


def _section_of(title: str) -> SectionSpec | None:
    title = title.strip(" \t")
    bare = title.rstrip("#")
    if not bare or bare[-1] in " \t":  # a closing sequence of '#'s (no regex: no backtracking)
        title = bare.strip(" \t")
    numbered = _NUMBERED.fullmatch(title)
    if numbered:
        return SECTION_BY_NUMBER.get(numbered.group(1))
    return SECTION_BY_TITLE.get(normalise(title))


def _path_put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _path_get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[CardProblem] = []
        self.data: dict[str, Any] = {}
        self.unreadable: set[tuple[str, ...]] = set()  # paths with a problem of their own
        self.seen: set[str] = set()  # labels of the sections the card has
        self.first_line = 1  # the card's line number of the body's first line

    def problem(self, field: str, found: str, expected: str) -> None:
        self.problems.append(CardProblem(field, found, expected))

    # The card as a whole.

    def read(self, text: str) -> CardImport:
        text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
        front_text, body = self._split_front_matter(text)
        if body is None:
            return CardImport(None, tuple(self.problems), {})
        front = self._front_matter(front_text) if front_text is not None else {}
        for block in self._blocks(self._strip_comments(body)):
            if block.spec is not None:
                self._section(block)
        self._front_matter_into_record(front)
        return CardImport(self._record(), tuple(self.problems), front)

    def _split_front_matter(self, text: str) -> tuple[str | None, str | None]:
        lines = text.split("\n")
        if lines[0].rstrip() != "---":
            return None, text
        for i in range(1, len(lines)):
            if lines[i].rstrip() in ("---", "..."):
                self.first_line = i + 2
                return "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
        self.problem(
            "Front matter",
            "an opening '---' line with no closing '---' line",
            "YAML front matter between two '---' lines, or none",
        )
        return None, None

    def _strip_comments(self, body: str) -> str:
        out: list[str] = []
        at = 0
        for match in _COMMENT.finditer(body):
            token = match.group()
            if token.startswith("\\"):
                continue
            out.append(body[at : match.start()])
            if token == "<!--":
                line = body.count("\n", 0, match.start()) + self.first_line
                self.problem(
                    "Card",
                    f"an HTML comment opened in line {line} and never closed",
                    "every '<!--' closed by '-->'",
                )
                return "".join(out)
            out.append("\n" * token.count("\n"))
            at = match.end()
        out.append(body[at:])
        return "".join(out)

    def _blocks(self, body: str) -> list[_Block]:
        blocks = [_Block(None, [])]
        fence: str | None = None
        fence_line = 0
        for number, line in enumerate(body.split("\n"), start=self.first_line):
            opened = _FENCE.match(line)
            if fence is not None:
                if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                    fence = None if not line.strip().strip(fence[0]) else fence
                continue
            if opened:
                fence, fence_line = opened.group(1), number
                continue
            heading = _HEADING.fullmatch(line)
            if heading:
                blocks.append(_Block(_section_of(heading.group(2) or ""), []))
            else:
                blocks[-1].lines.append(line)
        if fence is not None:  # Markdown runs it to the end: say so rather than lose the rest
            self.problem(
                "Card",
                f"a code block opened by {fence!r} in line {fence_line} and never closed",
                f"every code block closed by a line of {fence!r}",
            )
        return blocks

    # One section.

    def _section(self, block: _Block) -> None:
        spec = block.spec
        assert spec is not None
        if spec.label in self.seen:
            self.problem(spec.label, "the section given twice", "each section once")
            return
        self.seen.add(spec.label)
        tables: list[list[str]] = []
        previous_was_table = False
        for line in block.lines:  # prose between the tables is ignored
            is_table = line.strip(" \t").startswith("|")
            if is_table:
                if not previous_was_table:
                    tables.append([])
                tables[-1].append(line)
            previous_was_table = is_table
        if spec.bullets is not None:
            self._bullets(spec, block.lines)
        fields_seen: set[str] = set()
        for table in tables:
            self._table(spec, table, fields_seen)

    def _table(self, spec: SectionSpec, lines: list[str], fields_seen: set[str]) -> None:
        rows = [self._row(line) for line in lines]
        header = [text_of(strip(cell)) for cell in rows[0]]
        body = rows[1:]
        if body and all(_ALIGNMENT.fullmatch(text_of(strip(c))) for c in body[0]):
            body = body[1:]
        if [normalise(h) for h in header] == ["field", "value"] and not spec.parent:
            self._field_rows(spec, body, fields_seen)
        elif spec.rows is not None:
            self._list_rows(spec, spec.rows, header, body)
        else:
            columns = ", ".join(shown(h) for h in header)
            self.problem(
                spec.label,
                f"a table with the columns {columns}",
                "no table (a parent section)"
                if spec.parent
                else "a '| Field | Value |' table" + (" or a row table" if spec.rows else ""),
            )

    @staticmethod
    def _row(line: str) -> list[Chars]:
        cells = split(lex(line.strip(" \t")), "|")
        cells = cells[1:]  # before the leading pipe
        if cells and not strip(cells[-1]) and len(cells) > 1:
            cells = cells[:-1]  # after the trailing pipe
        return cells

    def _field_rows(self, spec: SectionSpec, rows: list[list[Chars]], seen: set[str]) -> None:
        by_name = {normalise(n): f for f in spec.fields for n in f.names}
        for cells in rows:
            if not any(strip(c) for c in cells):
                continue
            name = text_of(strip(cells[0]))
            field = by_name.get(normalise(name))
            label = f"{spec.label}: {field.names[0] if field else name}"
            if field is None:
                known = ", ".join(f.names[0] for f in spec.fields)
                self.problem(label, "a field this section does not have", f"one of: {known}")
                continue
            if field.names[0] in seen:
                self.problem(label, "the field given twice", "each field once")
                continue
            seen.add(field.names[0])
            if len(cells) > 2 and any(strip(c) for c in cells[2:]):
                self.problem(label, f"{len(cells)} cells in its row", "two: | Field | Value |")
                self.unreadable.add(field.path)
                continue
            value_cell = strip(cells[1]) if len(cells) > 1 else []
            try:
                value = field_value(field, value_cell)
            except Unreadable as exc:
                self.problem(label, exc.found, exc.expected)
                self.unreadable.add(field.path)
                continue
            if value is not None:
                _path_put(self.data, field.path, value)

    def _list_rows(
        self, spec: SectionSpec, rows: RowsSpec, header: list[str], body: list[list[Chars]]
    ) -> None:
        by_name = {normalise(n): c for c in rows.columns for n in c.names}
        columns: list[ColumnSpec] = []
        for name in header:
            column = by_name.get(normalise(name))
            if column is None or column in columns:
                known = " | ".join(c.names[0] for c in rows.columns)
                found = "a column given twice" if column else f"a column {shown(name)}"
                self.problem(f"{spec.label}: table", found, f"the columns | {known} |")
                return
            columns.append(column)
        key = rows.columns[0]
        if key not in columns:
            self.problem(
                f"{spec.label}: table",
                "no column " + repr(key.names[0]),
                f"a '{key.names[0]}' column naming each row",
            )
            return
        found_rows: list[dict[str, Any]] = _path_get(self.data, rows.path) or []
        for number, cells in enumerate(body, start=len(found_rows) + 1):
            if not any(strip(c) for c in cells):
                continue
            by_column = {c.key: strip(cell) for c, cell in zip(columns, cells, strict=False)}
            key_cell = by_column.get(key.key, [])
            row_name = text_of(key_cell)
            where = (
                f"(row {shown(row_name)})"
                if row_name and not not_stated(key_cell)
                else f"(row {number})"
            )
            if len(cells) > len(columns):
                self.problem(
                    f"{spec.label}: {where}",
                    f"{len(cells)} cells",
                    f"at most {len(columns)}, one per column",
                )
                continue
            row = self._list_row(spec, rows, by_column, where)
            if row is not None:
                found_rows.append(row)
        _path_put(self.data, rows.path, found_rows)

    def _list_row(
        self, spec: SectionSpec, rows: RowsSpec, cells: dict[str, Chars], where: str
    ) -> dict[str, Any] | None:
        row: dict[str, Any] = {}
        ok = True
        for column in rows.columns:
            chars = cells.get(column.key, [])
            label = f"{spec.label}: {column.names[0]} {where}"
            if not_stated(chars):
                if column.required:
                    self.problem(label, "not stated", f"the {column.names[0].lower()} of each row")
                    ok = False
                continue
            try:
                if column.kind == "records":
                    row["records"], row["records_note"] = records(text_of(chars))
                else:
                    row[column.key] = bounded(text_of(chars), SHORT_MAX)
            except Unreadable as exc:
                self.problem(label, exc.found, exc.expected)
                ok = ok and not column.required
        return row if ok else None

    def _bullets(self, spec: SectionSpec, lines: list[str]) -> None:
        assert spec.bullets is not None
        items: list[list[str]] = []
        current: list[str] | None = None
        for line in lines:
            bullet = _BULLET.fullmatch(line)
            if bullet:
                current = [bullet.group(1) or ""]
                items.append(current)
                continue
            if not line.strip() or line.strip(" \t").startswith("|"):
                current = None  # a table is reported by _table
                continue
            if current is not None and line.startswith(("  ", "\t")):
                current.append(line.strip(" \t"))
                continue
            if is_not_stated_text(line.strip()):
                continue
            self.problem(
                spec.label,
                f"text that is not a bullet item ({shown(line.strip())})",
                "a bullet list ('- item', one limitation per item)",
            )
        values: list[str] = []
        for number, parts in enumerate(items, start=1):
            chars = strip(lex(" ".join(parts)))
            if not_stated(chars):
                continue
            try:
                values.append(bounded(text_of(chars), LONG_MAX))
            except Unreadable as exc:
                self.problem(f"{spec.label}: item {number}", exc.found, exc.expected)
        if values:
            _path_put(self.data, spec.bullets, values)

    # The front matter and the record.

    def _front_matter(self, text: str) -> dict[str, Any]:
        try:
            data = parse_yaml(text, f"{self.source}: front matter", CardError)
        except CardError as exc:
            self.problem("Front matter", exc.message, "a YAML mapping (base_model, license, ...)")
            return {}
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(
                "Front matter",
                f"a YAML {type(data).__name__}, not a mapping",
                "a YAML mapping (base_model, license, ...)",
            )
            return {}
        return data

    def _front_string(self, front: dict[str, Any], key: str) -> str | None:
        value = front.get(key)
        if value is None:
            return None
        if isinstance(value, str) and 0 < len(value) <= SHORT_MAX:
            return value
        self.problem(
            f"Front matter: {key}",
            described(value),
            f'a non-empty string of at most {SHORT_MAX} characters (quote it: {key}: "...")',
        )
        return None

    def _front_matter_into_record(self, front: dict[str, Any]) -> None:
        licence = self._front_string(front, "license")
        if licence is not None:
            self._licence(front, licence)
        names = self._base_models(front.get("base_model"))
        revision = self._front_string(front, "base_model_revision")
        path = ("model", "dependencies")
        if path in self.unreadable:
            return
        deps: list[dict[str, str]] | None = _path_get(self.data, path)
        if deps is None:
            if names:
                deps = [{"name": n} for n in names]
                _path_put(self.data, path, deps)
        elif names is not None and [d["name"] for d in deps[: len(names)]] != names:
            self.problem(
                "1.2 Model identification: Model dependencies",
                shown("; ".join(d["name"] for d in deps))
                + f" (the front matter's base_model: {shown('; '.join(names))})",
                "the front matter's base_model first, in the same order",
            )
            return
        if revision is None:
            return
        if not deps:
            self.problem(
                "Front matter: base_model_revision",
                f"a revision ({shown(revision)}) of no named model",
                "base_model too, or the 1.2 row 'Model dependencies'",
            )
        elif deps[0].get("revision", revision) != revision:
            self.problem(
                "Front matter: base_model_revision",
                shown(revision),
                f"the revision 1.2 gives for {deps[0]['name']!r} ({deps[0]['revision']!r})",
            )
        else:
            deps[0]["revision"] = revision

    def _licence(self, front: dict[str, Any], licence: str) -> None:
        if licence.casefold() == "other":
            name = self._front_string(front, "license_name")
            if name is None:
                if "license_name" not in front:
                    self.problem(
                        "Front matter: license_name",
                        "not given (license: other)",
                        "the licence's name, e.g. license_name: my-licence",
                    )
            elif LICENSE_NAME.fullmatch(name):
                self.data["licence"] = LICENSE_REF + name
            else:
                self.problem(
                    "Front matter: license_name",
                    shown(name),
                    "letters, digits, '.' and '-' (it becomes LicenseRef-<name>)",
                )
            return
        self.data["licence"] = HF_LICENCES.get(licence.casefold(), licence)

    def _base_models(self, value: Any) -> list[str] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if (
            isinstance(items, list)
            and items
            and all(isinstance(i, str) and 0 < len(i) <= SHORT_MAX for i in items)
        ):
            return list(items)
        self.problem(
            "Front matter: base_model",
            described(value),
            "a model name, or a list of model names",
        )
        return None

    def _contradictions(self) -> None:
        for spec in SECTIONS:
            if spec.rows is None or not spec.fields:
                continue
            question = spec.fields[0]
            listed = _path_get(self.data, spec.rows.path) or []
            if _path_get(self.data, question.path) is False and listed:
                self.problem(
                    f"{spec.label}: {question.names[0]}",
                    f"No, with {len(listed)} row(s) listed below",
                    "Yes when the section lists what was used (or no rows)",
                )

    def _record(self) -> TransparencyRecord | None:
        missing = False
        for spec in SECTIONS:
            for field in spec.fields:
                if field.required is None:
                    continue
                if _path_get(self.data, field.path) is not None:
                    continue
                missing = True
                if field.path in self.unreadable:
                    continue
                found = "not stated" if spec.label in self.seen else f"no section {spec.number}"
                self.problem(f"{spec.label}: {field.names[0]}", found, field.required)
        self._contradictions()
        if missing:
            return None
        try:
            return TransparencyRecord.model_validate(self.data)
        except ValidationError as exc:  # a reader bug: every value was checked above
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                self.problem(f"Card ({where})", shown(str(error.get("input"))), error["msg"])
            return None
