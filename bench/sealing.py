"""Micro-benchmark: the CPU that sealing personal data adds to a create, and opening costs a
projector (`python -m bench.sealing`; no servers needed). docs/benchmarks.md, "Sealing"."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taskflow.commands.task import Priority, Status, TaskState
from taskflow.events.codec import encode_event
from taskflow.events.sealing import open_event, seal_event, seal_snapshot
from taskflow.events.task_events import TaskCreated

ROUNDS, REPEATS = 20_000, 5
OWNER = "b" * 32


def per_call_us(work: Callable[[], object]) -> float:
    """The least CPU time of one call over REPEATS runs of ROUNDS calls, in microseconds."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(ROUNDS):
            work()
        best = min(best, (time.process_time() - started) / ROUNDS * 1e6)
    return best


def main() -> None:
    key = AESGCM(AESGCM.generate_key(bit_length=256))
    now = datetime.now(UTC)
    event = TaskCreated(
        task_id="a" * 32,
        occurred_at=now,
        owner_id=OWNER,
        title="Write the report",
        description="some words about the report " * 3,
        status=Status.TODO,
        priority=Priority.MEDIUM,
        due_at=None,
        tags=("work", "q3"),
    )
    state = TaskState(
        **event.model_dump(exclude={"occurred_at"}),
        created_at=now,
        updated_at=now,
        deleted=False,
        version=1,
    )
    snapshot = state.model_dump_json().encode()
    sealed = seal_event(encode_event(event, 1), OWNER, 1, key)
    plain = per_call_us(lambda: encode_event(event, 1))
    with_seal = per_call_us(lambda: seal_event(encode_event(event, 1), OWNER, 1, key))
    snapshot_seal = per_call_us(lambda: seal_snapshot(snapshot, OWNER, 1, key))
    opening = per_call_us(lambda: open_event(sealed, key))
    added = with_seal - plain + snapshot_seal
    print(f"encode a TaskCreated: {plain:.1f} us; encode and seal it: {with_seal:.1f} us")
    print(f"seal the snapshot: {snapshot_seal:.1f} us; open the event: {opening:.1f} us")
    print(f"sealing adds {added:.1f} us to a create")


if __name__ == "__main__":
    main()
