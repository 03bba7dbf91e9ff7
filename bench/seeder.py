"""Bulk seeding of the event log: exactly what `MongoEventStore.append` writes, in batches.

The append path costs an insert per commit plus Redis round trips (≈4 ms on FerretDB); seeding
100,000 commits that way takes minutes. The seeder builds the same commits with the store's own
pieces (`encode_event`, `HashChain.sign`, `commit_to_document`, `commit_to_json`, the key names
of `taskflow.names`) and writes them with `insert_many`, then leaves Redis as a run of appends
would: a hint per position, each stream's head with its state snapshot, the reserved position
blocks and the counter (`PositionCounter.seed_bulk_load`). `tests/test_bulk_seeder.py`
proves the documents and the Redis state equal what `append` writes for the same commits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from taskflow import names
from taskflow.commands.aggregates import TASK
from taskflow.commands.task import ChangeTask, CreateTask, Priority, Status, TaskCommand, TaskState
from taskflow.events.base import DomainEvent
from taskflow.events.chain import HashChain
from taskflow.events.codec import commit_to_document, commit_to_json, encode_event, to_millis
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import BrokenLink, Commit, Metadata

WORDS = ["alpha", "beta", "gamma", "delta", "report", "budget", "launch", "review", "bug"]
BATCH = 1000  # documents per insert_many (about 0.8 MB; far below the 48 MB message limit)
# What `MongoEventStore` uses by default (its `hint_ttl` and `head_ttl`).
HINT_TTL = 24 * 3600
HEAD_TTL = 0  # heads never expire


@dataclass(frozen=True)
class PlannedCommit:
    """One command's commit as the command side would append it: the append's arguments."""

    stream_id: str
    expected_version: int
    events: tuple[DomainEvent, ...]
    metadata: Metadata
    recorded_at: datetime
    snapshot: bytes  # the state after the commit, as the runner caches it (`execute`)


@dataclass(frozen=True)
class Shape:
    """How a history is spread: about `per_task` commits per task, `tasks_per_user` per owner."""

    commits: int
    per_task: int = 10
    tasks_per_user: int = 10
    seed: int = 7
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    @property
    def tasks(self) -> int:
        return max(1, -(-self.commits // self.per_task))

    @property
    def users(self) -> int:
        return max(1, -(-self.tasks // self.tasks_per_user))


def plan(shape: Shape) -> Iterator[PlannedCommit]:
    """`shape.commits` task commits in a random interleaving; each task's first is its create.

    Deterministic for a shape. Every command changes something, so each makes one commit.
    """
    rng = random.Random(shape.seed)  # noqa: S311 - reproducible data, not a secret
    owners = [_hex(rng) for _ in range(shape.users)]
    tasks = [(_hex(rng), owners[i % len(owners)]) for i in range(shape.tasks)]
    slots = [i % len(tasks) for i in range(shape.commits)]
    rng.shuffle(slots)
    states: dict[int, TaskState] = {}
    for n, slot in enumerate(slots):
        task_id, owner = tasks[slot]
        state = states.get(slot)
        command = _create(rng, task_id, owner, n) if state is None else _change(rng, state, n)
        now = to_millis(shape.start + timedelta(milliseconds=10 * n))
        events = tuple(TASK.decide(state, command, now))
        new_state = state
        for event in events:
            new_state = TASK.evolve(new_state, event)
        assert new_state is not None
        assert events
        states[slot] = new_state
        metadata = Metadata(actor=owner, request_id=_hex(rng), correlation_id=_hex(rng))
        yield PlannedCommit(
            stream_id=TASK.stream_id(task_id),
            expected_version=0 if state is None else state.version,
            events=events,
            metadata=metadata,
            recorded_at=now,
            snapshot=new_state.model_dump_json().encode(),
        )


def owners_of(shape: Shape) -> list[str]:
    """The owner ids `plan(shape)` uses (the same random draws, first)."""
    rng = random.Random(shape.seed)  # noqa: S311 - reproducible data, not a secret
    return [_hex(rng) for _ in range(shape.users)]


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _create(rng: random.Random, task_id: str, owner: str, n: int) -> CreateTask:
    return CreateTask(
        task_id=task_id,
        owner_id=owner,
        title=f"{' '.join(rng.sample(WORDS, 2))} {n}",
        tags=tuple(rng.sample(WORDS, 2)),
        priority=rng.choice(list(Priority)),
    )


def _change(rng: random.Random, state: TaskState, n: int) -> TaskCommand:
    """A change that always changes something: a new title, maybe a new status or priority."""
    fields: dict[str, object] = {"title": f"{' '.join(rng.sample(WORDS, 2))} {n}"}
    roll = rng.random()
    if roll < 0.4:
        fields["status"] = rng.choice([s for s in Status if s is not state.status])
    elif roll < 0.6:
        fields["priority"] = rng.choice([p for p in Priority if p is not state.priority])
    elif roll < 0.75:
        fields["tags"] = tuple(rng.sample(WORDS, rng.randint(0, 3)))
    return ChangeTask(task_id=state.task_id, **fields)


# -- writing ------------------------------------------------------------------------------------


class BulkSeeder:
    """Writes planned commits to an empty log at positions 1, 2, 3, ... as `append` would."""

    def __init__(
        self,
        store: MongoEventStore,
        redis: Redis,
        chain: HashChain,
        *,
        hints: bool = True,
        batch: int = BATCH,
    ) -> None:
        self._store = store
        self._redis = redis
        self._chain = chain
        self._hints = hints
        self._batch = batch
        self._heads: dict[str, str] = {}  # stream -> last hash (the chain's previous link)
        self._snapshots: dict[str, bytes] = {}  # stream -> state after its newest commit
        # Where seeding spends its time, in seconds: MongoDB inserts and Redis writes.
        self.seconds = {"insert_many": 0.0, "redis": 0.0}

    async def seed(
        self, planned: Iterable[PlannedCommit], progress: Callable[[int], None] = lambda n: None
    ) -> int:
        """Insert every planned commit; the number written. The log must be empty."""
        if await self._store.commits.estimated_document_count():
            raise ValueError("the bulk seeder writes positions from 1: the log must be empty")
        written, batch = 0, list[Commit]()
        for item in planned:
            batch.append(self.commit(item, position=written + len(batch) + 1))
            if len(batch) >= self._batch:
                written += await self._write(batch)
                progress(len(batch))
                batch = []
        if batch:
            written += await self._write(batch)
            progress(len(batch))
        # The position blocks reserved and the counter at the highest position, as the appends
        # would leave them.
        await self._store.positions.seed_bulk_load(written)
        return written

    def commit(self, item: PlannedCommit, position: int) -> Commit:
        """The signed commit `_insert_with_position` builds for `item` at `position`."""
        first = item.expected_version + 1
        commit_id = f"{item.stream_id}:{first}"
        stored = tuple(encode_event(event, first + i) for i, event in enumerate(item.events))
        unsigned = Commit(
            commit_id=commit_id,
            stream_id=item.stream_id,
            first_version=first,
            last_version=first + len(stored) - 1,
            position=position,
            recorded_at=to_millis(item.recorded_at),
            events=stored,
            metadata=item.metadata,
            idempotency=f"~{commit_id}",
            prev_hash=self._heads.get(item.stream_id, ""),
        )
        commit = unsigned.model_copy(update={"hash": self._chain.sign(unsigned)})
        self._heads[item.stream_id] = commit.hash
        self._snapshots[item.stream_id] = item.snapshot
        return commit

    async def _write(self, commits: list[Commit]) -> int:
        documents = [commit_to_document(c) for c in commits]
        start = time.perf_counter()
        await self._store.commits.insert_many(documents, ordered=True)
        inserted = time.perf_counter()
        await self._announce(commits)
        self.seconds["insert_many"] += inserted - start
        self.seconds["redis"] += time.perf_counter() - inserted
        return len(commits)

    async def _announce(self, commits: list[Commit]) -> None:
        """What `_announce` leaves after these appends: hints and each stream's newest head."""
        newest: dict[str, Commit] = {c.stream_id: c for c in commits}
        async with self._redis.pipeline(transaction=False) as pipe:
            if self._hints:
                for c in commits:
                    pipe.set(names.commit_hint_key(c.position), commit_to_json(c), ex=HINT_TTL)
            for stream_id, c in newest.items():
                key = names.stream_head_key(stream_id)
                pipe.hset(key, mapping={"v": c.last_version, "h": c.hash})
                pipe.hset(key, "s", self._snapshots[stream_id])
                if HEAD_TTL:
                    pipe.expire(key, HEAD_TTL)
            await pipe.execute()


async def verify_seeded(store: MongoEventStore, expected: int) -> list[BrokenLink]:
    """`verify_all` over the seeded log, checking on the way that it holds `expected` commits.

    Counted while streaming: `count_documents` is an aggregation that FerretDB runs over the
    whole collection in Go (it timed out after 120 s at 100,000 commits on a loaded machine).
    """
    seen: list[int] = []
    broken = await store.verify_all(progress=seen.append)
    if seen != list(range(1, expected + 1)):
        raise AssertionError(f"the log holds positions 1-{len(seen)}, 1-{expected} were seeded")
    return broken
