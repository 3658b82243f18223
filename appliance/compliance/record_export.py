"""The site's compliance file: every adapter's transparency record as JSON and Markdown, and
an index of the findings under the site policy (``appliance bundle export-records``).

``export_files`` builds the files from inventory rows and records (pure):
``<adapter>.json`` (``export.record_json``) and ``<adapter>.md``
(``export.record_markdown``) per adapter that carries a record, and
``_index.md`` / ``_index.json`` listing every adapter of the bundle (one
without a record is listed with its ``record-missing`` finding and no files,
never skipped), the base model, and each finding with the policy's action. The
index names start with ``_``, which no adapter name can (bundle names start
with a letter or digit), so nothing collides.

``write_export`` writes them all or nothing: into a sibling temporary
directory first, then renamed onto ``out`` (new, or an existing empty
directory, replaced in one rename); on any failure nothing is left behind. The
caller checks ``out`` first with ``output_paths.new_or_empty_directory``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.compliance.export import record_json, record_markdown
from appliance.compliance.inventory import ModelRow, inventory_json, row_lines
from appliance.compliance.policy import SitePolicy
from appliance.compliance.record import TEMPLATE, TransparencyRecord
from appliance.errors import OutputPathError
from appliance.output_paths import hint_for, reason

INDEX_JSON = "_index.json"
INDEX_MD = "_index.md"


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the export directory
    sha256: str
    size: int


def export_files(
    rows: Sequence[ModelRow],
    records: Mapping[str, TransparencyRecord | None],
    *,
    bundle: str,
    policy: SitePolicy,
    policy_source: str,
) -> dict[str, bytes]:
    """The export's files by name: each adapter's record (JSON, Markdown) and the index.

    ``records``: every adapter of the bundle by name (None: it carries no record);
    ``rows``: the bundle's inventory rows (their findings go into the index).
    """
    files: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    by_name = {r.name: r for r in rows if r.kind == "adapter"}
    for name, record in records.items():
        if record is not None:
            files[f"{name}.json"] = record_json(name, record)
            files[f"{name}.md"] = record_markdown(name, record).encode()
        entries.append(
            {
                "adapter": name,
                "record": None
                if record is None
                else {"json": f"{name}.json", "markdown": f"{name}.md"},
            }
        )
    rows_data = inventory_json(rows)
    index = {
        "bundle": bundle,
        "template": TEMPLATE,
        "policy": {"source": policy_source, **policy.model_dump(mode="json")},
        "adapters": entries,
        "models": rows_data,
    }
    files[INDEX_JSON] = (
        json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode()
    files[INDEX_MD] = _index_markdown(
        rows, by_name, records, bundle, policy, policy_source
    ).encode()
    return files


def _index_markdown(
    rows: Sequence[ModelRow],
    by_name: Mapping[str, ModelRow],
    records: Mapping[str, TransparencyRecord | None],
    bundle: str,
    policy: SitePolicy,
    policy_source: str,
) -> str:
    lines = [
        f"# Transparency records of bundle {bundle}",
        "",
        f"Template: {TEMPLATE}.",
        f"Site policy: {policy_source}, intended use {policy.intended_use}.",
        "The findings read what each provider declared; they do not verify it and are not"
        " legal advice.",
        "",
        "| Adapter | Record | Refused | Warned | Ignored |",
        "|---|---|---|---|---|",
    ]
    for name, record in records.items():
        row = by_name.get(name)
        decisions = row.decisions if row is not None else ()
        counts = [sum(1 for d in decisions if d.action == a) for a in ("refuse", "warn", "ignore")]
        shown = (
            f"[{name}.md]({name}.md), [{name}.json]({name}.json)"
            if record
            else "NONE (record-missing)"
        )
        lines.append(f"| {name} | {shown} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", "## Models", "", "```"]
    for row in rows:
        lines += row_lines(row)
    lines += ["```", ""]
    return "\n".join(lines)


def write_export(files: Mapping[str, bytes], out: Path, flag: str = "--out") -> list[WrittenFile]:
    """Write ``files`` into ``out`` (created, or an empty directory replaced), all or nothing."""
    partial = out.absolute().parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    written: list[WrittenFile] = []
    try:
        partial.mkdir()
        for name in sorted(files):
            data = files[name]
            (partial / name).write_bytes(data)
            written.append(WrittenFile(name, hashlib.sha256(data).hexdigest(), len(data)))
        partial.rename(out)  # replaces an empty directory in one step; refuses a non-empty one
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise OutputPathError(
            f"{flag} {out}: could not write the records: {reason(exc)}",
            hint=hint_for(
                exc, "Give a new or empty directory you may write; nothing was left behind."
            ),
        ) from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return written
