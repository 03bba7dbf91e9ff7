"""Value types shared by task events and task commands: enums, constrained strings, UTC times."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, StringConstraints

TITLE_MAX = 200
DESCRIPTION_MAX = 10_000
TAG_MAX = 32
TAGS_MAX = 20
ID_MAX = 128

_TAG_PUNCTUATION = frozenset("-_:.")
# Bidirectional embeddings, overrides and isolates (LRE..RLO, LRI..PDI): they reorder how the
# text around them is displayed, so a title could show something else than it says.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class Status(StrEnum):
    """Where a task stands in its workflow."""

    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class Priority(StrEnum):
    """How urgent a task is, lowest first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"


def to_utc(value: datetime) -> datetime:
    """The same instant expressed in UTC; ValueError for a naive or unrepresentable datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must carry a time zone")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+05:00 has no UTC equivalent
        raise ValueError("datetime is out of range once converted to UTC") from exc


def trimmed(max_length: int) -> AfterValidator:
    """A validator: strip surrounding whitespace, then require 1 to `max_length` characters."""

    # str.strip, not pydantic's strip_whitespace: the latter keeps e.g. "\x1f", which Python (and
    # therefore every later .strip() on the value) treats as whitespace.
    def check(value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= max_length:
            raise ValueError(f"must have 1 to {max_length} characters once trimmed")
        return value

    return AfterValidator(check)


def printable(allowed: str = "") -> AfterValidator:
    """A validator: refuse C0 and C1 control characters (NUL, ESC of ANSI sequences, DEL, ...)
    other than those in `allowed`, and bidirectional override characters."""

    def check(value: str) -> str:
        for ch in value:
            if ch in _BIDI_CONTROLS:
                raise ValueError("must not contain bidirectional control characters")
            if unicodedata.category(ch) == "Cc" and ch not in allowed:
                raise ValueError(f"must not contain control characters (found U+{ord(ch):04X})")
        return value

    return AfterValidator(check)


def normalize_tag(raw: str) -> str:
    """The canonical form of a tag (see `Tag`); ValueError when it cannot be one."""
    # NFKC first so that full-width and composed/decomposed spellings give the same tag.
    tag = "-".join(unicodedata.normalize("NFKC", raw).lower().split())
    if not 1 <= len(tag) <= TAG_MAX:
        raise ValueError(f"a tag must have 1 to {TAG_MAX} characters")
    if not all(ch.isalnum() or ch in _TAG_PUNCTUATION for ch in tag):
        raise ValueError("a tag may contain only letters, digits and - _ : .")
    return tag


def normalize_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    """Already-normalised tags without duplicates, first occurrence kept; at most TAGS_MAX."""
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > TAGS_MAX:
        raise ValueError(f"a task may have at most {TAGS_MAX} tags")
    return unique


UtcDatetime = Annotated[AwareDatetime, AfterValidator(to_utc)]
"""A tz-aware datetime, normalised to UTC; naive datetimes are rejected."""

EntityId = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX, pattern=r"^[A-Za-z0-9_.:-]+$")
]
"""An aggregate or user id: short, and free of anything a query language could interpret."""

Title = Annotated[str, printable(), trimmed(TITLE_MAX)]
"""A task title: no control or bidi characters; surrounding whitespace trimmed, 1 to 200 left."""

Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX), printable("\t\n\r")]
"""A task description, possibly empty, at most 10,000 characters; tabs and line breaks are the
only control characters it may hold, and no bidi controls."""

Tag = Annotated[str, printable(), AfterValidator(normalize_tag)]
"""A tag: no control or bidi characters; NFKC, trimmed, lower case, inner whitespace runs as
"-", 1-32 letters, digits, -_:."""

Tags = Annotated[tuple[Tag, ...], AfterValidator(normalize_tags)]
"""Up to 20 normalised tags, duplicates dropped, order of first appearance kept."""


def to_milliseconds(value: datetime) -> datetime:
    """The instant truncated to the millisecond, the finest a BSON date (and so a view) holds."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


DueAt = Annotated[UtcDatetime, AfterValidator(to_milliseconds)]
"""A due date: tz-aware, UTC, whole milliseconds, so the log, Redis and MongoDB agree on it.

Events decode through this type too, so an old event with microseconds folds to the same value
the read models store (an upcast on read; the stored event and its hash are untouched).
"""
