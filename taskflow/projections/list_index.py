"""An owner's live task views as a list-page index: what filters and sorts them, and each rendered.

An uncached list page used to parse every one of the owner's stored views, parse three ISO
datetimes of each to sort them, and render the page's. The index is built from the views once
per generation of the owner's tasks (the counter the projector moves with every change of them,
in the same transaction as the views), on its second uncached page (task_queries.TaskReads: the
first does the old work and marks it), and cached under it, as the pages are: a later uncached
page of the same generation walks the query's order (stored ready, as positions), parses the
small entry (the fields the filters test and the sort values) of each view it passes, until the
page is full, and joins the page's items, rendered when the index was built, as they are stored
(task_queries.TaskReads, docs/benchmarks.md "HTTP reads (R, Q)"). A page costs what it walks,
not what the owner has; a cursor is found by bisection.

An API process keeps the indexes it read (`ListIndex`, its entries parsed as walks reach them)
and asks Redis for an index only when the one it holds is not the owner's current one: each
index begins with 16 random bytes, its build id, which the guarded script compares with the
copy's (task_queries.py), so a copy is used only while Redis holds the very same index.

Stored as one string: the build id (16 random bytes), the number of views n (4 bytes), a table
of 8n unsigned 32-bit integers
(little-endian: the four orders, created, updated, due, priority, each n positions ascending;
then, per view, where its entry and its item start and how long each is), the entries (JSON
arrays) and the items (JSON), each one after the other.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from taskflow.projections.mongo_views import PRIORITY_RANK

# In the cache key: bump it when the layout below changes, so no process reads another layout.
FORMAT = "index3"
BUILD_ID_BYTES = 16

# An entry, a JSON array; its fields by position:
ID, STATUS, PRIORITY, TAGS, DUE_US = 0, 1, 2, 3, 4  # DUE_US: exact microseconds, or null
SORTED = {"created": 5, "updated": 6, "due": 7}  # sort values, as task_queries.sort_value_json
FIELDS = ("created", "updated", "due", "priority")  # the orders, in the table's order
_COUNT = struct.Struct("<I")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Entry = list[Any]
ViewJson = dict[str, Any]
OrderKey = tuple[int, int, str]


def exact_us(moment: datetime) -> int:
    """A time-zone-aware moment as whole microseconds since the epoch, without rounding."""
    return (moment - _EPOCH) // _MICROSECOND


def sort_us(raw: str) -> int:
    """The value a stored ISO moment sorts by: `timestamp()` in microseconds, truncated, as the
    cursors have always carried it (a float's rounding included)."""
    return int(datetime.fromisoformat(raw).timestamp() * 1_000_000)


def sort_value(entry: Entry, field: str) -> int | None:
    """What `entry` sorts by in `field`'s order (None sorts first ascending)."""
    if field == "priority":
        return PRIORITY_RANK[entry[PRIORITY]]
    value: int | None = entry[SORTED[field]]
    return value


def order_key(value: int | None, task_id: str) -> OrderKey:
    # Missing values sort first ascending, as MongoDB orders null before any value.
    return (0, 0, task_id) if value is None else (1, value, task_id)


def build(views: Iterable[ViewJson], render: Callable[[ViewJson], Any]) -> bytes:
    """The index of the live ones of `views` (stored JSON, parsed), each rendered by `render`."""
    entries: list[Entry] = []
    items: list[bytes] = []
    for view in views:
        if view["deleted"]:
            continue
        created_at, updated_at, due_at = view["created_at"], view["updated_at"], view["due_at"]
        created = sort_us(created_at)
        updated = created if updated_at == created_at else sort_us(updated_at)
        due_us = due = None
        if due_at is not None:
            moment = datetime.fromisoformat(due_at)
            due_us, due = exact_us(moment), int(moment.timestamp() * 1_000_000)
        task = (view["task_id"], view["status"], view["priority"], view["tags"])
        entries.append([*task, due_us, created, updated, due])
        items.append(orjson.dumps(render(view)))
    chunks = [orjson.dumps(entry) for entry in entries]
    table = _table()
    for field in FIELDS:
        keys = [order_key(sort_value(entry, field), entry[ID]) for entry in entries]
        table.extend(sorted(range(len(entries)), key=keys.__getitem__))
    entry_at, item_at = 0, sum(map(len, chunks))
    for chunk, item in zip(chunks, items, strict=True):
        table.extend((entry_at, len(chunk), item_at, len(item)))
        entry_at, item_at = entry_at + len(chunk), item_at + len(item)
    if sys.byteorder != "little":
        table.byteswap()
    build_id = os.urandom(BUILD_ID_BYTES)
    return b"".join([build_id, _COUNT.pack(len(entries)), table.tobytes(), *chunks, *items])


def _table() -> array[int]:
    table = array("I")
    assert table.itemsize == 4, "the table's integers are 32-bit"
    return table


class ListIndex:
    """A stored index: the table read, each entry parsed when a walk first reaches it (and kept:
    a process walks the same index for many pages), the items left in the stored bytes until
    joined."""

    def __init__(self, stored: bytes) -> None:
        self.build_id = stored[:BUILD_ID_BYTES]
        (count,) = _COUNT.unpack_from(stored, BUILD_ID_BYTES)
        start = BUILD_ID_BYTES + _COUNT.size
        whole = memoryview(stored)
        table = _table()
        table.frombytes(whole[start : start + 32 * count])
        if sys.byteorder != "little":
            table.byteswap()
        self.size = len(stored)
        self._count = count
        self._table = table
        self._data = whole[start + 32 * count :]
        self._entries: list[Entry | None] = [None] * count

    def walk(
        self, field: str, descending: bool, after: OrderKey | None = None
    ) -> Iterator[tuple[int, Entry]]:
        """(position, entry) of each view in `field`'s order, ties broken by the task id (as
        paginate's); with `after`, only those beyond it in that order (a cursor's position)."""
        at = FIELDS.index(field) * self._count
        order = self._table[at : at + self._count]
        if after is not None:
            keyed = range(self._count)

            def key(k: int) -> OrderKey:
                entry = self.entry(order[k])
                return order_key(sort_value(entry, field), entry[ID])

            if descending:
                order = order[: bisect.bisect_left(keyed, after, key=key)]
            else:
                order = order[bisect.bisect_right(keyed, after, key=key) :]
        for i in reversed(order) if descending else order:
            yield i, self.entry(i)

    def entry(self, i: int) -> Entry:
        """The `i`th view's entry, parsed (once)."""
        entry = self._entries[i]
        if entry is None:
            at = 4 * self._count + 4 * i
            start, length = self._table[at], self._table[at + 1]
            entry = self._entries[i] = orjson.loads(self._data[start : start + length])
        return entry

    def item(self, i: int) -> memoryview:
        """The `i`th view as the index's renderer rendered it (JSON)."""
        at = 4 * self._count + 4 * i + 2
        start, length = self._table[at], self._table[at + 1]
        return self._data[start : start + length]
