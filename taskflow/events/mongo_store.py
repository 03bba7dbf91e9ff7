"""The event store on MongoDB (the log) with Redis as its accelerator (counter, hints, heads).

Every race is decided by one insert under a unique index (docs/concurrency.md): `_id`
(`<stream_id>:<first_version>`) decides the version, `position` the global order, `idempotency`
the retried command. Redis only speeds the common case up; MongoDB stays the authority.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import orjson
import structlog
from pymongo import ASCENDING, ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from taskflow import names
from taskflow.events.base import DomainEvent
from taskflow.events.chain import HashChain
from taskflow.events.codec import (
    commit_from_document,
    commit_from_json,
    commit_to_document,
    commit_to_json,
    current_schema,
    encode_event,
    to_millis,
)
from taskflow.events.gaps import make_gap
from taskflow.events.group_insert import GroupInsert
from taskflow.events.log_reader import LogReader, documents_ahead, in_position_order
from taskflow.events.log_seals import LogAudit, LogAuditor, Seal
from taskflow.events.positions import PositionCounter
from taskflow.events.records import (
    AppendResult,
    BrokenLink,
    Commit,
    Metadata,
    StoredEvent,
    StreamHead,
)
from taskflow.events.sealing import (
    erased_subject,
    open_event,
    open_snapshot,
    seal_event,
    seal_snapshot,
    sealed_by,
    snapshot_sealed_by,
)
from taskflow.events.store import ConcurrencyError, IdempotencyKeyReusedError
from taskflow.hot_redis import HotRedis
from taskflow.metrics import APPENDS, CONFLICTS
from taskflow.mongo_indexes import serves_query_indexes
from taskflow.privacy.data_keys import DataKeys, SubjectErasedError
from taskflow.settings import DEFAULT_MAX_BATCH
from taskflow.text import as_text

log = structlog.get_logger(__name__)

# How often one append may find its position already settled by a sealer before giving up, and
# after how many such collisions in a row it suspects a counter behind the log and re-seeds it.
POSITION_ATTEMPTS = 8
RESEED_AFTER = 3
# How often (in positions) a long audit saves where it is, to resume from after an interruption.
AUDIT_SAVE_EVERY = 10_000

# Keep a head only if it is newer than the cached one (Redis scripts run atomically).
_SET_HEAD = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
local version = tonumber(ARGV[1])
if current > version or (current == version and ARGV[3] == '') then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'h', ARGV[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 's')
else
  redis.call('HSET', KEYS[1], 's', ARGV[3])
end
if ARGV[4] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1
"""


class _Duplicate(Enum):
    OURS = "this very commit: the insert was applied, and the driver sent it again"
    REPLAY = "an earlier commit with the same idempotency key"
    CONFLICT = "another commit at the same stream version"
    POSITION = "a commit or gap at the same position"


class PositionUnavailableError(Exception):
    """Every position this append took was settled by someone else first."""


Sealer = Callable[[StoredEvent], StoredEvent]


def _as_stored(stored: StoredEvent) -> StoredEvent:
    return stored


class MongoEventStore:
    """`EventStore` on MongoDB; see the module docstring and docs/event-log.md.

    With `keys`, personal fields are stored sealed under their subject's data key, and so are
    state snapshots; every read but `read_stored` opens them (sealing.py, docs/privacy.md).
    Without (some tests and benchmarks of the log alone), events are stored as they come.
    """

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        redis: Redis,
        chain: HashChain,
        *,
        hot: HotRedis,
        gap_timeout: float = 2.0,
        hint_ttl: int = 24 * 3600,
        head_ttl: int = 0,
        insert_batch: int = DEFAULT_MAX_BATCH,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        keys: DataKeys | None = None,
    ) -> None:
        self.commits: AsyncCollection[dict[str, Any]] = db.get_collection(
            names.COMMITS,
            write_concern=WriteConcern("majority", j=True),
            read_preference=ReadPreference.PRIMARY,
        )
        # Seals of the whole log (events/log_seals.py), written by the projector's log seal.
        self.seals: AsyncCollection[dict[str, Any]] = db.get_collection(
            names.LOG_SEALS,
            write_concern=WriteConcern("majority", j=True),
            read_preference=ReadPreference.PRIMARY,
        )
        self._redis = redis
        # The append path's Redis calls (position, announce, heads, idempotent outcomes) go out
        # pipelined with the process's other quick calls (hot_redis.py): one connection.
        self.hot = hot
        self._chain = chain
        self._clock = clock
        self.keys = keys
        # 0: heads never expire. A command on a stream without a head reads the stream from
        # MongoDB, which on FerretDB scans the whole log (seconds at 10,000 commits), so an
        # idle task must not lose its head just for being idle (docs/benchmarks.md, Scale).
        self._head_ttl = head_ttl
        self._idem_ttl = hint_ttl
        self._set_head = redis.register_script(_SET_HEAD)
        # Commits inserted together, up to `insert_batch` at a time (Settings.log_insert_batch,
        # group_insert.py); 0: each append inserts its commit on its own, concurrently.
        self._group = GroupInsert(self.commits, insert_batch) if insert_batch else None
        self.positions = PositionCounter(
            redis, self.commits, db[names.POSITION_BLOCKS], clock, hint_ttl, hot
        )
        self.reader = LogReader(
            self.commits, hot, self.positions, gap_timeout=gap_timeout, hint_ttl=hint_ttl
        )

    @property
    def chain(self) -> HashChain:
        """The keyed hash chain the log is signed with (the log seal signs with it too; for
        verifying and re-chaining the log)."""
        return self._chain

    async def ensure_indexes(self) -> None:
        """Create the log's indexes; safe to run at every start-up."""
        await self.commits.create_index([("position", ASCENDING)], unique=True)
        await self.commits.create_index([("idempotency", ASCENDING)], unique=True)
        if await serves_query_indexes(self.commits):  # not on FerretDB with SQLite
            # Reads a stream's commits in version order. `_id` already decides a version race
            # on its own, so where no read can use this index (FerretDB with SQLite) it is left
            # out: one b-tree fewer for every insert, a quarter less written (docs/benchmarks.md,
            # "One index fewer on the log"). Unique as it always was, so an existing index keeps
            # its options.
            await self.commits.create_index(
                [("stream_id", ASCENDING), ("first_version", ASCENDING)], unique=True
            )
            await self.commits.create_index([("recorded_at", ASCENDING)])

    # -- writing ------------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[DomainEvent],
        metadata: Metadata,
        idempotency_key: str | None = None,
        snapshot: bytes | None = None,
        prev_hash: str | None = None,
        subject: str | None = None,
    ) -> AppendResult:
        if not events:
            raise ValueError("an append needs at least one event")
        if idempotency_key is not None:
            earlier = await self.replayed(metadata.actor, idempotency_key, metadata.fingerprint)
            if earlier is not None:
                return earlier
        seal, snapshot = await self._sealing(subject, events, snapshot)
        try:
            if prev_hash is None or expected_version == 0:
                prev_hash = await self._prev_hash(stream_id, expected_version)
            return await self._insert_with_position(
                stream_id,
                expected_version,
                events,
                metadata,
                idempotency_key,
                prev_hash,
                snapshot,
                seal,
            )
        except ConcurrencyError:
            CONFLICTS.inc()
            if idempotency_key is None:
                raise
            earlier = await self.replayed(
                metadata.actor, idempotency_key, metadata.fingerprint, thorough=True
            )
            if earlier is None:
                raise
            return earlier

    async def _insert_with_position(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[DomainEvent],
        metadata: Metadata,
        idempotency_key: str | None,
        prev_hash: str,
        snapshot: bytes | None,
        seal: Sealer = _as_stored,
    ) -> AppendResult:
        first = expected_version + 1
        commit_id = f"{stream_id}:{first}"
        stored = tuple(seal(encode_event(event, first + i)) for i, event in enumerate(events))
        unsigned = Commit(
            commit_id=commit_id,
            stream_id=stream_id,
            first_version=first,
            last_version=first + len(stored) - 1,
            position=0,
            recorded_at=to_millis(self._clock()),
            events=stored,
            metadata=metadata,
            idempotency=_idempotency(metadata.actor, idempotency_key) or f"~{commit_id}",
            prev_hash=prev_hash,
        )
        # Signed before a position is taken (the chain does not cover positions): every later
        # commit waits for this one's position to be settled, so the time between taking it
        # and inserting is kept to the insert itself.
        signed = unsigned.model_copy(update={"hash": self._chain.sign(unsigned)})
        for attempt in range(1, POSITION_ATTEMPTS + 1):
            commit = signed.model_copy(update={"position": await self.positions.take()})
            try:
                await self._insert(commit)
            except DuplicateKeyError:
                head = await self._moved_past(commit) if idempotency_key is None else None
                if head is not None and not _is_head(head, commit):
                    await self._fill(commit.position)
                    raise ConcurrencyError(stream_id, expected_version, head.version) from None
                outcome, other = await self._explain_duplicate(commit)
                if outcome is _Duplicate.OURS:
                    # The driver retried an insert whose first try was applied (a lost reply:
                    # PyMongo retries a write once, and FerretDB does not recognise the retry).
                    # The commit is stored as this append made it: that is a success.
                    return await self._committed(commit, snapshot, idempotency_key)
                if outcome is _Duplicate.POSITION:
                    # Usually a reader sealed a position this writer held too long: the next
                    # one is free. Only repeated collisions suggest a counter behind the log.
                    if attempt >= RESEED_AFTER:
                        await self.positions.reseed()
                    continue
                await self._fill(commit.position)
                if outcome is _Duplicate.REPLAY and other is not None:
                    return _replay_of(other, metadata.fingerprint)
                head, _ = await self.load_head(stream_id)
                raise ConcurrencyError(stream_id, expected_version, head.version) from None
            return await self._committed(commit, snapshot, idempotency_key)
        raise PositionUnavailableError(f"no free position after {POSITION_ATTEMPTS} attempts")

    async def _committed(
        self, commit: Commit, snapshot: bytes | None, idempotency_key: str | None
    ) -> AppendResult:
        APPENDS.inc()
        await self._announce(commit, snapshot, idempotency_key)
        await self._reserve_ahead()
        return _result_of(commit)

    async def _sealing(
        self, subject: str | None, events: Sequence[DomainEvent], snapshot: bytes | None
    ) -> tuple[Sealer, bytes | None]:
        """How to seal this append's events, and its snapshot sealed (None: not to be kept).

        SubjectErasedError when an event holds personal data of an erased subject. An event
        without personal data may still follow an erasure (the erasure's own event does), but
        no snapshot of an erased subject's stream is kept: there is no key to seal it with.
        """
        if self.keys is None:
            return _as_stored, snapshot
        personal = any(event.personal_fields for event in events)
        if subject is None:
            if personal:
                raise ValueError("events with personal fields need the subject they are about")
            return _as_stored, snapshot
        try:
            version, key = await self.keys.sealing_key(subject)
        except SubjectErasedError:
            if personal:
                raise
            return _as_stored, None

        def seal(stored: StoredEvent) -> StoredEvent:
            return seal_event(stored, subject, version, key)

        return seal, None if snapshot is None else seal_snapshot(snapshot, subject, version, key)

    async def _reserve_ahead(self) -> None:
        """The commit is stored: a failure here only means a later take reserves the block."""
        try:
            await self.positions.reserve_ahead()
        except (PyMongoError, RedisError) as exc:
            log.warning("position_block_not_reserved_ahead", error=str(exc))

    async def _insert(self, commit: Commit) -> None:
        """The one write of an append (a seam where tests inject faults)."""
        document = commit_to_document(commit)
        if self._group is None:
            await self.commits.insert_one(document)
        else:
            await self._group.insert(commit.position, document)

    async def _prev_hash(self, stream_id: str, expected_version: int) -> str:
        if expected_version == 0:
            # A new stream needs no read, not even of the cached head: the unique `_id` of its
            # first commit refutes it if it is not new (then `_moved_past` or
            # `_explain_duplicate` reports the conflict and the position is filled).
            return ""
        head = await self.stream_head(stream_id)
        if head is not None and head.version > expected_version:
            raise ConcurrencyError(stream_id, expected_version, head.version)
        if head is None or head.version != expected_version:
            head, _ = await self.load_head(stream_id)
            if head.version != expected_version:
                raise ConcurrencyError(stream_id, expected_version, head.version)
        return head.hash

    async def _moved_past(self, commit: Commit) -> StreamHead | None:
        """The cached head when it already covers `commit`'s version: a conflict, no read needed.

        The head is written only after an insert succeeded, so it never leads the log.
        """
        head = await self.stream_head(commit.stream_id)
        return head if head is not None and head.version >= commit.first_version else None

    async def _explain_duplicate(self, commit: Commit) -> tuple[_Duplicate, Commit | None]:
        """Which unique index refused `commit` (the server's error does not say), by reading.

        The position's hint answers the common case with one Redis GET: another document holds
        the position. Otherwise one read of the log (a scan on FerretDB) decides.
        """
        with contextlib.suppress(RedisError):
            held = await self._redis.get(names.commit_hint_key(commit.position))
            if held is not None and commit_from_json(held).commit_id != commit.commit_id:
                return _Duplicate.POSITION, None
        query = {
            "$or": [
                {"_id": commit.commit_id},
                {"idempotency": commit.idempotency},
                {"position": commit.position},
            ]
        }
        others = [commit_from_document(doc) for doc in await self.commits.find(query).to_list()]
        if any(_same_commit(other, commit) for other in others):
            return _Duplicate.OURS, None
        for other in others:
            if other.idempotency == commit.idempotency and not commit.idempotency.startswith("~"):
                return _Duplicate.REPLAY, other
        if any(other.commit_id == commit.commit_id for other in others):
            return _Duplicate.CONFLICT, None
        return _Duplicate.POSITION, None

    async def _fill(self, position: int) -> None:
        """A writer that will not use its position settles it with a gap at once."""
        gap = make_gap(position, self._clock())
        try:
            await self.commits.insert_one(commit_to_document(gap))
        except DuplicateKeyError:
            return  # a reader sealed it already
        await self._best_effort(self.reader.hint(gap))

    async def _announce(self, commit: Commit, snapshot: bytes | None, key: str | None) -> None:
        """Tell Redis what was committed: hint, new head, idempotent outcome, wake-up.

        Queued together on the process's pipelined connection, in order: the hint goes before
        the wake-up, so a woken reader finds it.
        """
        head_key = names.stream_head_key(commit.stream_id)
        head_args: list[bytes | str | int] = [
            commit.last_version,
            commit.hash,
            snapshot or b"",
            self._head_ttl,
        ]
        # EVALSHA, not the registered script: it must travel in the batch (NOSCRIPT below).
        set_head = ("EVALSHA", self._set_head.sha, 1, head_key, *head_args)
        commands: list[Sequence[Any]] = [
            (
                "SET",
                names.commit_hint_key(commit.position),
                commit_to_json(commit),
                "EX",
                self._idem_ttl,
            ),
            set_head,
        ]
        if key is not None and commit.metadata is not None:
            outcome = {"result": _result_of(commit).model_dump(), "fp": commit.metadata.fingerprint}
            commands.append(
                (
                    "SET",
                    names.idempotency_key(commit.metadata.actor, key),
                    orjson.dumps(outcome),
                    "EX",
                    self._idem_ttl,
                )
            )
        commands.append(("PUBLISH", names.WAKE_CHANNEL, str(commit.position)))
        await self._best_effort(self._execute_announce(commands, head_key, head_args))

    async def _execute_announce(
        self, commands: Sequence[Sequence[Any]], head_key: str, head_args: list[bytes | str | int]
    ) -> None:
        """Send the announce; if Redis lost the head script (a restart, SCRIPT FLUSH), the rest
        has run, and the head is set once more through the script object, which loads it."""
        replies = await self.hot.execute_all(commands)
        for reply in replies:
            if isinstance(reply, NoScriptError):
                await self._set_head(keys=[head_key], args=head_args)
            elif isinstance(reply, Exception):
                raise reply

    async def _best_effort(self, awaitable: Any) -> None:
        """Redis here only accelerates: the commit is durable, readers fall back to MongoDB.
        (A call on the pipelined connection that misses its deadline is a TimeoutError.)"""
        try:
            await awaitable
        except (RedisError, TimeoutError) as exc:
            log.warning("redis_hint_failed", error=repr(exc))

    # -- reading ------------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, to_version: int | None = None, as_of: datetime | None = None
    ) -> list[Commit]:
        commits = await self.read_stored(stream_id, to_version, as_of)
        return [await self.open(commit) for commit in commits]

    async def read_stored(
        self, stream_id: str, to_version: int | None = None, as_of: datetime | None = None
    ) -> list[Commit]:
        """The stream's commits exactly as stored: sealed, in their stored schema (the hash
        chain and the rewrite of legacy events need this form; nothing else should)."""
        query: dict[str, Any] = {"stream_id": stream_id}
        if to_version is not None:
            query["first_version"] = {"$lte": to_version}
        if as_of is not None:
            query["recorded_at"] = {"$lte": as_of}
        cursor = self.commits.find(query).sort("first_version", ASCENDING)
        commits = [commit_from_document(doc) for doc in await cursor.to_list()]
        if to_version is not None and commits and commits[-1].last_version > to_version:
            # A commit spanning `to_version`: keep only its events up to it (reading only).
            last = commits[-1]
            kept = tuple(event for event in last.events if event.version <= to_version)
            commits[-1] = last.model_copy(update={"events": kept, "last_version": to_version})
        return commits

    async def stream_head(self, stream_id: str) -> StreamHead | None:
        version, hash_, snapshot = await self.hot.execute(
            "HMGET", names.stream_head_key(stream_id), "v", "h", "s"
        )
        if version is None or hash_ is None:
            return None
        return StreamHead(
            version=int(version),
            hash=as_text(hash_),
            snapshot=await self._open_snapshot(snapshot) if snapshot else None,
        )

    async def _open_snapshot(self, raw: bytes | str) -> bytes | None:
        """A cached snapshot in plain bytes; None when its subject's key is gone."""
        raw = raw.encode() if isinstance(raw, str) else raw
        sealed = snapshot_sealed_by(raw)
        if sealed is None:
            return raw
        key = None if self.keys is None else await self.keys.opening_key(*sealed)
        return None if key is None else open_snapshot(raw, key)

    async def load_head(self, stream_id: str) -> tuple[StreamHead, list[Commit]]:
        commits = await self.read_stream(stream_id)
        head = (
            StreamHead(version=commits[-1].last_version, hash=commits[-1].hash)
            if commits
            else (StreamHead(version=0, hash=""))
        )
        if commits:
            await self._best_effort(
                self._set_head(
                    keys=[names.stream_head_key(stream_id)],
                    args=[head.version, head.hash, b"", self._head_ttl],
                )
            )
        return head, commits

    async def cache_snapshot(
        self, stream_id: str, head: StreamHead, snapshot: bytes, subject: str | None = None
    ) -> None:
        if self.keys is not None and subject is not None:
            try:
                version, key = await self.keys.sealing_key(subject)
            except SubjectErasedError:
                return  # nothing to seal it with, and it may not be kept in plain text
            snapshot = seal_snapshot(snapshot, subject, version, key)
        await self._best_effort(
            self._set_head(
                keys=[names.stream_head_key(stream_id)],
                args=[head.version, head.hash, snapshot, self._head_ttl],
            )
        )

    async def replayed(
        self, actor: str, key: str, fingerprint: str, *, thorough: bool = False
    ) -> AppendResult | None:
        """The first outcome of (actor, key); `thorough` also asks the log (a scan: rare paths)."""
        raw = await self.hot.execute("GET", names.idempotency_key(actor, key))
        if raw is not None:
            outcome = orjson.loads(raw)
            if outcome["fp"] != fingerprint:
                raise IdempotencyKeyReusedError(key)
            return AppendResult.model_validate({**outcome["result"], "replayed": True})
        if not thorough:
            return None
        doc = await self.commits.find_one({"idempotency": _idempotency(actor, key)})
        return None if doc is None else _replay_of(commit_from_document(doc), fingerprint)

    async def read_all(
        self, after_position: int, limit: int | None = None
    ) -> AsyncGenerator[Commit, None]:
        count = 0
        async with contextlib.aclosing(self.reader.read(after_position)) as commits:
            async for commit in commits:
                yield await self.open(commit)
                count += 1
                if limit is not None and count >= limit:
                    return

    def read_all_stored(self, after_position: int) -> AsyncGenerator[Commit, None]:
        """`read_all` without opening: for a reader of positions and hashes only (the log
        seal), to which opening every event's sealed fields was two thirds of the cost."""
        return self.reader.read(after_position)

    async def scan(self, after_position: int = 0) -> AsyncGenerator[Commit, None]:
        """Every stored document after a position, straight from MongoDB in one streamed pass,
        in position order (log_reader.in_position_order: no server-side sort).

        For auditors: it reads what MongoDB holds (not the Redis hints) and does not wait at
        holes; `read_all` is the gap-safe reader for anything that keeps a checkpoint.
        """
        async with contextlib.aclosing(self.scan_stored(after_position)) as commits:
            async for commit in commits:
                yield await self.open(commit)

    async def scan_stored(self, after_position: int = 0) -> AsyncGenerator[Commit, None]:
        """`scan` without opening: every document exactly as stored."""
        query = {"position": {"$gt": after_position}}
        cursor = self.commits.find(query).batch_size(1000)
        async with (
            contextlib.aclosing(documents_ahead(cursor)) as stored,
            contextlib.aclosing(in_position_order(stored, after_position)) as docs,
        ):
            async for doc in docs:
                yield commit_from_document(doc)

    async def head_position(self) -> int:
        return await self.reader.head()

    async def allocated_position(self) -> int | None:
        return await self.positions.allocated()

    async def highest_stored_position(self) -> int:
        cursor = self.commits.find({}, {"position": 1}).sort("position", -1).limit(1)
        last = await cursor.to_list()
        return int(last[0]["position"]) if last else 0

    async def verify(self, stream_id: str) -> BrokenLink | None:
        return self._chain.verify_stream(await self.read_stored(stream_id))

    async def verify_all(
        self, progress: Callable[[int], None] = lambda position: None
    ) -> list[BrokenLink]:
        """The first broken link of every stream, checking the whole log in one streamed pass."""
        return (await self.audit(progress)).broken

    async def audit(
        self,
        progress: Callable[[int], None] = lambda position: None,
        *,
        resume: dict[str, Any] | None = None,
        save: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        save_every: int = AUDIT_SAVE_EVERY,
    ) -> LogAudit:
        """Every stream's chain, every seal and the log's contiguity, in one streamed pass.

        The log is read once, in position order, straight from MongoDB as signed (`scan_stored`:
        personal data still sealed, so no key is needed); the seals,
        a far smaller collection, are read beside it in position order and merged in. Every
        `save_every` positions the auditor's state goes to `save`; `resume` (such a state)
        goes on after the last position it covered, so a pass cut off by a timeout or a
        restart does not start over (operations.audit_verify).
        """
        settled = await self.head_position()
        auditor = (
            LogAuditor(self._chain, settled)
            if resume is None
            else LogAuditor.resumed(self._chain, resume, settled)
        )
        after = auditor.audit.last_position
        query = self.seals.find({"_id": {"$gt": after}}).sort("_id", ASCENDING).batch_size(1000)
        async with (
            contextlib.aclosing(documents_ahead(query)) as seal_docs,
            contextlib.aclosing(self.scan_stored(after)) as log,
        ):
            seal = await _next_seal(seal_docs)
            saved = after
            async for commit in log:
                progress(commit.position)
                while seal is not None and seal.position < commit.position:
                    auditor.seal(seal)  # it names a position the log no longer holds
                    seal = await _next_seal(seal_docs)
                auditor.add(commit)
                if seal is not None and seal.position == commit.position:
                    auditor.seal(seal)
                    seal = await _next_seal(seal_docs)
                if save is not None and commit.position >= saved + save_every:
                    await save(auditor.snapshot())
                    saved = commit.position
            beyond = []
            while seal is not None:
                beyond.append(seal)
                seal = await _next_seal(seal_docs)
        return auditor.finish(beyond)

    async def open(self, commit: Commit) -> Commit:
        """`commit` as readers see it: personal fields opened with their subject's key (listed
        as erased when it is destroyed) and payloads in the current schema. An erasure event
        marks its user erased in this process before anything after it is opened."""
        if commit.is_gap:
            return commit
        events = []
        for stored in commit.events:
            opened = stored
            sealed = sealed_by(stored)
            if sealed is not None:
                key = None if self.keys is None else await self.keys.opening_key(*sealed)
                opened = open_event(stored, key)
            opened = current_schema(opened)
            erased = erased_subject(opened)
            if erased is not None and self.keys is not None:
                self.keys.mark_erased(erased)
            events.append(opened)
        if all(a is b for a, b in zip(events, commit.events, strict=True)):
            return commit
        return commit.model_copy(update={"events": tuple(events)})


async def _next_seal(docs: AsyncGenerator[dict[str, Any], None]) -> Seal | None:
    doc = await anext(docs, None)
    return None if doc is None else Seal.of(doc)


def _same_commit(stored: Commit, commit: Commit) -> bool:
    """Whether `stored` is `commit` itself: the same id and position, and the same chain hash,
    which covers its content, metadata and request id (no other append signs the same)."""
    return (stored.commit_id, stored.position, stored.hash) == (
        commit.commit_id,
        commit.position,
        commit.hash,
    )


def _is_head(head: StreamHead, commit: Commit) -> bool:
    """Whether the cached head is `commit` (someone read it from the log before we announced)."""
    return head.version == commit.last_version and head.hash == commit.hash


def _idempotency(actor: str, key: str | None) -> str | None:
    return None if key is None else f"{actor}:{key}"


def _result_of(commit: Commit) -> AppendResult:
    return AppendResult(
        stream_id=commit.stream_id,
        first_version=commit.first_version,
        version=commit.last_version,
        position=commit.position,
    )


def _replay_of(original: Commit, fingerprint: str) -> AppendResult:
    if original.metadata is None or original.metadata.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(original.idempotency)
    return _result_of(original).model_copy(update={"replayed": True})
