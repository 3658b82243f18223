"""The cells of a transparency card: escapes, "not stated", and each kind of value.

A cell is lexed into characters that remember whether they were escaped
(``card_format``'s rule: a backslash before anything but a letter, digit or line
break; ``<br>`` a line break), so a separator, a "not stated" spelling or a
leading space that was escaped stays text. Each value parser either returns the
record's value or raises ``Unreadable`` with what it found and what it expected;
none guesses, and none backtracks (every pattern is bounded or anchored).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from appliance.compliance.card_format import (
    BUCKET_LABELS,
    LONG_MAX,
    MODALITIES,
    NON_COUNT_WORDS,
    SHORT_MAX,
    TICKED_MARKS,
    UNTICKED_MARKS,
    FieldSpec,
    escapable,
    is_not_stated_text,
    normalise,
)
from appliance.compliance.record import SizeBucket
from appliance.errors import InputError

# --- Cells -------------------------------------------------------------------------------------

Chars = list[tuple[str, bool]]  # each character with whether it was escaped
_BR = re.compile(r"<br[ \t]*/?>", re.IGNORECASE)


def lex(raw: str) -> Chars:
    out: Chars = []
    i, end = 0, len(raw)
    while i < end:
        char = raw[i]
        if char == "\\" and i + 1 < end and escapable(raw[i + 1]):
            out.append((raw[i + 1], True))
            i += 2
            continue
        if char == "<":
            br = _BR.match(raw, i)
            if br:
                out.append(("\n", True))
                i = br.end()
                continue
        out.append((char, False))
        i += 1
    return out


def strip(chars: Chars) -> Chars:
    start, end = 0, len(chars)
    while start < end and chars[start][0] in " \t" and not chars[start][1]:
        start += 1
    while end > start and chars[end - 1][0] in " \t" and not chars[end - 1][1]:
        end -= 1
    return chars[start:end]


def split(chars: Chars, sep: str) -> list[Chars]:
    parts: list[Chars] = [[]]
    for char, escaped in chars:
        if char == sep and not escaped:
            parts.append([])
        else:
            parts[-1].append((char, escaped))
    return parts


def text_of(chars: Chars) -> str:
    return "".join(char for char, _ in chars)


def not_stated(chars: Chars) -> bool:
    return not any(escaped for _, escaped in chars) and is_not_stated_text(text_of(chars))


def shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def described(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown(str(value))})"


class Unreadable(InputError):
    """One cell that cannot be read: what was found, what was expected. The card reader turns
    it into a ``CardProblem``; it never leaves the reader."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(f"found {found}; expected {expected}")
        self.found = found
        self.expected = expected


# --- Values --------------------------------------------------------------------------------------

_DATE = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?")
_INT = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,30})?%?")
_COUNT = re.compile(r"([0-9]{1,3}(?:,[0-9]{3}){1,5}|[0-9]{1,15})(?:[ \t]*\((.*)\))?", re.DOTALL)
_NON_COUNT = re.compile(
    "(?:" + "|".join(re.escape(w) for w in NON_COUNT_WORDS) + r")(?![\w/])", re.IGNORECASE
)
_MARK = re.compile("|".join(re.escape(m) for m in (*TICKED_MARKS, *UNTICKED_MARKS)))


def bounded(text: str, limit: int) -> str:
    if len(text) > limit:
        raise Unreadable(f"{len(text)} characters", f"at most {limit} characters")
    return text


def _date(text: str) -> str:
    match = _DATE.fullmatch(text)
    if match:
        year, month, day = (int(g) if g else 1 for g in match.groups())
        try:
            dt.date(year, month, day)
        except ValueError:
            pass
        else:
            return text
    raise Unreadable(shown(text), "a date as YYYY-MM or YYYY-MM-DD")


def _boxes(text: str, expected: str) -> list[tuple[bool, str]] | None:
    """The (ticked, label) pairs of a checkbox answer; None when it has no boxes."""
    marks = list(_MARK.finditer(text))
    if not marks:
        return None
    lead = text[: marks[0].start()].strip()
    if lead:
        raise Unreadable(f"text before the first box ({shown(lead)})", expected)
    out: list[tuple[bool, str]] = []
    for i, mark in enumerate(marks):
        stop = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append((mark.group() in TICKED_MARKS, text[mark.end() : stop].strip()))
    return out


def _choice(text: str, labels: dict[str, str], expected: str) -> list[str]:
    """The ticked choices (keys of ``labels``, by normalised label) of a checkbox answer; a
    plain answer of comma-separated labels is read as ticked."""
    boxes = _boxes(text, expected)
    if boxes is None:
        boxes = [(True, part.strip()) for part in text.split(",")]
    ticked: list[str] = []
    for on, label in boxes:
        key = labels.get(normalise(label))
        if key is None:
            raise Unreadable(f"a box labelled {shown(label)}", expected)
        if on and key not in ticked:
            ticked.append(key)
    return ticked


def _yesno(text: str) -> bool | None:
    expected = "one of Yes and No ticked (☒ Yes ☐ No)"
    ticked = _choice(text, {"yes": "yes", "no": "no"}, expected)
    if len(ticked) == 2:
        raise Unreadable("both Yes and No ticked", expected)
    return None if not ticked else ticked[0] == "yes"


_MODALITY_LABELS: dict[str, str] = {m: m for m in MODALITIES}
_BUCKETS: dict[str, SizeBucket] = {normalise(label): b for b, label in BUCKET_LABELS.items()}
_BUCKETS_EXPECTED = "at most one of the template's buckets: " + ", ".join(
    repr(label) for label in BUCKET_LABELS.values()
)


def _modalities(text: str) -> list[str] | None:
    ticked = _choice(text, _MODALITY_LABELS, "boxes labelled Text, Image, Audio, Video, Other")
    return ticked or None


def _bucket(text: str) -> str | None:
    ticked = _choice(text, dict(_BUCKETS), _BUCKETS_EXPECTED)
    if len(ticked) > 1:
        both = " and ".join(repr(BUCKET_LABELS[_BUCKETS[normalise(t)]]) for t in ticked)
        raise Unreadable(f"{both} ticked", _BUCKETS_EXPECTED)
    return ticked[0] if ticked else None


def _int(text: str, low: int, high: int | None) -> int:
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if _INT.fullmatch(text):
        value = int(text)
        if value >= low and (high is None or value <= high):
            return value
    raise Unreadable(shown(text), f"an integer {span}")


def _list(chars: Chars) -> list[str]:
    items = [text_of(strip(part)) for part in split(chars, ",")]
    return [bounded(item, SHORT_MAX) for item in items if item]


def _dependencies(chars: Chars) -> list[dict[str, str]]:
    expected = "'name' or 'name (revision REV)', several separated by ';'"
    deps: list[dict[str, str]] = []
    for part in split(chars, ";"):
        item = strip(part)
        if not item:
            continue
        revision: str | None = None
        if item[-1] == (")", False):
            opening = max((i for i, c in enumerate(item) if c == ("(", False)), default=-1)
            inner = strip(item[opening + 1 : -1]) if opening >= 0 else []
            after = _after_revision(inner)
            if opening < 0 or after is None:
                raise Unreadable(shown(text_of(item)), expected)
            revision = text_of(strip(inner[after:]))
            item = strip(item[:opening])
        name = text_of(item)
        if not name or revision == "":
            raise Unreadable(shown(text_of(part).strip()), expected)
        if any(c in "()" and not escaped for c, escaped in item):
            raise Unreadable(shown(name), expected)
        dep = {"name": bounded(name, SHORT_MAX)}
        if revision is not None:
            dep["revision"] = bounded(revision, SHORT_MAX)
        deps.append(dep)
    return deps


def _after_revision(chars: Chars) -> int | None:
    """Where the revision starts in 'revision REV' (unescaped word and spaces), or None."""
    word = len("revision")
    if text_of(chars[:word]).casefold() != "revision" or any(e for _, e in chars[:word]):
        return None
    end = word
    while end < len(chars) and chars[end] in ((" ", False), ("\t", False)):
        end += 1
    return end if end > word else None


def records(text: str) -> tuple[int | None, str | None]:
    count = _COUNT.fullmatch(text)
    if count:
        note = count.group(2)
        return int(count.group(1).replace(",", "")), bounded(note, SHORT_MAX) if note else None
    if _NON_COUNT.match(text):
        return None, bounded(text, SHORT_MAX)
    raise Unreadable(
        shown(text),
        "an integer (12000 or 12,000) or a non-count answer (" + ", ".join(NON_COUNT_WORDS) + ")",
    )


def field_value(spec: FieldSpec, chars: Chars) -> Any:
    """The record value of a field's cell (``None``: not stated); ``Unreadable`` otherwise."""
    if not_stated(chars):
        return None
    text = text_of(chars)
    kind = spec.kind
    if kind == "short":
        return bounded(text, SHORT_MAX)
    if kind == "long":
        return bounded(text, LONG_MAX)
    if kind == "date":
        return _date(text)
    if kind == "yesno":
        return _yesno(text)
    if kind == "modalities":
        return _modalities(text)
    if kind == "bucket":
        return _bucket(text)
    if kind == "int":
        return _int(text, spec.low, spec.high)
    if kind == "decimal":
        if _DECIMAL.fullmatch(text):
            return text
        raise Unreadable(shown(text), "a decimal number such as 0.05")
    if kind == "list":
        return _list(chars) or None
    return _dependencies(chars) or None  # "deps"
