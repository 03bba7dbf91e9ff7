"""Names of TaskFlow's own HTTP headers, defined once."""

from __future__ import annotations

# A write's commit position in the global log; sent back on a read for read-your-writes.
POSITION_HEADER = "X-TaskFlow-Position"
# On a read that could not wait long enough for the position it was given.
STALE_HEADER = "X-TaskFlow-Stale"
