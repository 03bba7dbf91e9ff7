"""Whether the MongoDB-protocol server can use a query index, asked of the server itself.

TaskFlow's collections carry two kinds of index. A unique index decides races (the log's
position, a stream's version, an idempotency key): every server needs it, and it is always
created. A query index only speeds up reads that filter or sort on its fields, and a server
that never hands such a filter to its storage cannot use one. FerretDB v1 on SQLite is such a
server: it evaluates every filter except one on `_id` in Go, over every document, and its
explain says so (`filterPushdown: false`). There a query index only makes writes dearer: with
the task views' seven, a replace wrote 52.7 KiB to SQLite instead of 18.9 KiB and cost FerretDB
1.6-1.9 ms of CPU instead of 0.9-1.1 ms (docs/benchmarks.md, "Query indexes only where they
serve"). So query indexes are created where the server pushes filters down: on MongoDB (whose
explain has no such field) and on FerretDB's PostgreSQL backend (which pushes plain equality
down as a JSON containment test; docs/design.md says why no index serves that either, but the
probe errs on the side of creating them).
"""

from __future__ import annotations

import contextlib
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import CollectionInvalid

# A field no document has: only how the server plans the filter matters.
_PROBE = {"~index_probe": 0}


async def serves_query_indexes(collection: AsyncCollection[Any]) -> bool:
    """Whether a filter on a field other than `_id` reaches `collection`'s storage, where an
    index can serve it. The collection is created if missing: FerretDB pushes nothing down for
    a collection it does not have, whatever its backend could do."""
    with contextlib.suppress(CollectionInvalid):  # it exists
        await collection.database.create_collection(collection.name)
    explained = await collection.database.command(
        "explain", {"find": collection.name, "filter": _PROBE}, verbosity="queryPlanner"
    )
    return explained.get("filterPushdown") is not False
