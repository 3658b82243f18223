"""Export a transparency record for the site's compliance file: JSON and a Markdown card.

``record_markdown`` writes the record in the card format ``card`` reads
(docs/transparency-cards.md): front matter, every section and field of the
template (a field the record does not state as "Not stated"), the adapter's
facts. Both sides take their vocabulary from ``card_format``, and
``parse_card(record_markdown(name, r)).record == r`` for every record the card
format can express (values with pipes, backslashes, line breaks or list
separators are escaped, not lost).

``record_json`` is deterministic: sorted keys, two-space indent, UTF-8, one final
newline, with the template's name and the record version beside the record.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from appliance.compliance.card_format import (
    BUCKET_LABELS,
    LICENSE_NAME,
    LICENSE_REF,
    MODALITIES,
    NOT_STATED,
    SECTIONS,
    SIZE_BUCKETS,
    SPDX_TO_HF,
    TICKED,
    UNTICKED,
    FieldSpec,
    SectionSpec,
    escape_cell,
)
from appliance.compliance.record import TEMPLATE, TransparencyRecord


def record_json(name: str, record: TransparencyRecord) -> bytes:
    """The record as canonical JSON bytes, named, with the template and record version."""
    document = {
        "name": name,
        "template": TEMPLATE,
        "record_version": record.record_version,
        "record": record.model_dump(mode="json"),
    }
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def record_markdown(name: str, record: TransparencyRecord) -> str:
    """The record as a model card in the card format (front matter and sections)."""
    data = record.model_dump(mode="json")
    lines = _front_matter(record)
    title = " ".join(name.split()) or "model"
    lines += [f"# Transparency record: {title}", "", f"<!-- {_comment(TEMPLATE)} -->", ""]
    for spec in SECTIONS:
        lines += [f"{'#' * spec.level} {spec.heading}", ""]
        lines += _section(spec, data)
    return "\n".join(lines).rstrip("\n") + "\n"


def _comment(text: str) -> str:
    return text.replace("--", "- -")


def _front_matter(record: TransparencyRecord) -> list[str]:
    front: dict[str, Any] = {}
    deps = record.model.dependencies
    if deps:
        front["base_model"] = deps[0].name if len(deps) == 1 else [d.name for d in deps]
        if deps[0].revision is not None:
            front["base_model_revision"] = deps[0].revision
    if record.licence is not None:
        name = record.licence.removeprefix(LICENSE_REF)
        if record.licence.startswith(LICENSE_REF) and LICENSE_NAME.fullmatch(name):
            front["license"] = "other"
            front["license_name"] = name
        else:
            front["license"] = SPDX_TO_HF.get(record.licence, record.licence)
    if not front:
        return []
    dumped = yaml.safe_dump(
        front, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 20
    )
    return ["---", dumped.rstrip("\n"), "---", ""]


def _section(spec: SectionSpec, data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if spec.fields:
        lines += ["| Field | Value |", "|---|---|"]
        lines += [f"| {field.names[0]} | {_field(field, data)} |" for field in spec.fields]
        lines.append("")
    if spec.rows is not None:
        rows: list[dict[str, Any]] = _get(data, spec.rows.path) or []
        if rows:
            columns = spec.rows.columns
            lines.append("| " + " | ".join(c.names[0] for c in columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                cells = [
                    _records(row) if c.kind == "records" else _text(row.get(c.key)) for c in columns
                ]
                lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(NOT_STATED)
        lines.append("")
    if spec.bullets is not None:
        items: list[str] = _get(data, spec.bullets) or []
        lines += [f"- {escape_cell(item)}" for item in items] or [NOT_STATED]
        lines.append("")
    return lines


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _text(value: str | None, specials: str = "") -> str:
    return NOT_STATED if value is None else escape_cell(value, specials)


def _boxes(labels: list[tuple[str, bool]]) -> str:
    return " ".join(f"{TICKED if on else UNTICKED} {label}" for label, on in labels)


def _field(field: FieldSpec, data: dict[str, Any]) -> str:
    value = _get(data, field.path)
    kind = field.kind
    if kind == "yesno":
        return _boxes([("Yes", value is True), ("No", value is False)])
    if kind == "modalities":
        ticked: list[str] = list(value or ())
        rest = [m for m in MODALITIES if m not in ticked]
        return _boxes(
            [(m.capitalize(), True) for m in ticked] + [(m.capitalize(), False) for m in rest]
        )
    if kind == "bucket":
        return _boxes([(BUCKET_LABELS[b], value == b) for b in SIZE_BUCKETS])
    if kind == "int":
        return NOT_STATED if value is None else str(value)
    if kind == "list":
        return ", ".join(escape_cell(item, ",") for item in value) if value else NOT_STATED
    if kind == "deps":
        if not value:
            return NOT_STATED
        return "; ".join(
            escape_cell(d["name"], ";()")
            + ("" if d["revision"] is None else f" (revision {escape_cell(d['revision'], ';()')})")
            for d in value
        )
    return _text(value)  # short, long, date, decimal


def _records(row: dict[str, Any]) -> str:
    records, note = row.get("records"), row.get("records_note")
    if records is None:
        return _text(note)
    return str(records) if note is None else f"{records} ({escape_cell(note)})"
