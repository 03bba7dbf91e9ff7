"""`taskflow audit rewrite-legacy`: bring a log written before sealing up to date, in place.

Logs written before this version hold password hashes in user events (schema version 1) and
personal data in plain text. Readers never show either (upcasters drop the hash; sealing.py),
but the stored documents still hold them, and an erasure cannot shred plain text. This command
rewrites every such commit: the hashes move to `credentials` (filed under the ids the
upcasters name) and leave the event, personal fields are sealed under their subject's data key,
and each affected stream is re-chained (every later commit's `prev_hash` and `hash` recomputed
with EVENT_LOG_HMAC_KEY), so `taskflow audit verify` passes afterwards. E-mail reservations
keyed by the plain address are re-keyed by its keyed hash.

It never launders tampering: a commit whose own hash does not match its content, or whose link
to the previous commit is broken other than by this command, stops the rewrite of its stream,
which is reported. Idempotent and resumable: before replacing a commit it records the hash it
replaces in `log_rewrites` (insert-only), so a run interrupted halfway, or a commit appended
meanwhile on top of a replaced hash, is recognised and re-linked by the next run; a second run
over a finished log changes nothing. Run one at a time.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import DuplicateKeyError

from taskflow import names
from taskflow.commands.user_handlers import reservations_of
from taskflow.events.codec import commit_to_document, commit_to_json, current_schema
from taskflow.events.records import Commit, StoredEvent
from taskflow.events.sealing import plaintext_fields, seal_event
from taskflow.services import Services

Progress = Callable[[int], None]


@dataclass
class RewriteReport:
    """What a run did."""

    streams: int = 0
    commits: int = 0
    reservations: int = 0
    refused: list[str] = field(default_factory=list)  # "<stream>: <why>"


def is_legacy(stored: StoredEvent) -> bool:
    """Whether a stored event still holds a password hash or personal data in plain text."""
    return "password_hash" in stored.data or bool(plaintext_fields(stored))


async def rewrite_legacy(services: Services, progress: Progress = lambda n: None) -> RewriteReport:
    """Rewrite every legacy commit and re-chain its stream; see the module docstring."""
    report = RewriteReport()
    journal = await _journal(services)
    for stream_id in await _streams_to_rewrite(services, journal, progress):
        why = await _rewrite_stream(services, stream_id, journal, report)
        if why is not None:
            report.refused.append(f"{stream_id}: {why}")
    report.reservations = await _rekey_reservations(services)
    return report


async def _journal(services: Services) -> dict[str, str]:
    """Every hash a rewrite replaced, with the commit it belonged to."""
    docs = services.db[names.LOG_REWRITES].find({})
    return {str(doc["_id"]): str(doc["commit_id"]) async for doc in docs}


async def _streams_to_rewrite(
    services: Services, journal: dict[str, str], progress: Progress
) -> list[str]:
    """Streams with a legacy event, or a link to a hash an earlier run replaced (one pass)."""
    last: dict[str, tuple[str, str]] = {}  # stream -> (hash, commit id) of its latest commit
    found: dict[str, None] = {}
    async for commit in services.store.scan_stored():
        progress(commit.position)
        if commit.is_gap:
            continue
        before = last.get(commit.stream_id, ("", ""))
        relinked = commit.prev_hash != before[0] and journal.get(commit.prev_hash) == before[1]
        if relinked or any(is_legacy(event) for event in commit.events):
            found[commit.stream_id] = None
        last[commit.stream_id] = (commit.hash, commit.commit_id)
    return list(found)


async def _rewrite_stream(
    services: Services, stream_id: str, journal: dict[str, str], report: RewriteReport
) -> str | None:
    """Rewrite one stream; why it was refused, or None."""
    store = services.store
    commits = await store.read_stored(stream_id)
    subject = _subject(stream_id, commits)
    if subject is None:
        return "its subject (user or task owner) cannot be told"
    problem = _tampered(services, commits, journal)
    if problem is not None:
        return problem
    if stream_id.startswith("user-"):
        await services.accounts.credentials.adopt_legacy(subject, commits)
    version, key = await services.keys.sealing_key(subject)
    prev_hash = ""
    changed = 0
    for commit in commits:
        events = tuple(
            seal_event(current_schema(e), subject, version, key) if is_legacy(e) else e
            for e in commit.events
        )
        unsigned = commit.model_copy(update={"events": events, "prev_hash": prev_hash, "hash": ""})
        rewritten = unsigned.model_copy(update={"hash": store.chain.sign(unsigned)})
        prev_hash = rewritten.hash
        if rewritten == commit:
            continue
        await _record(services, commit, journal)
        await store.commits.replace_one({"_id": commit.commit_id}, commit_to_document(rewritten))
        await services.redis.set(
            names.commit_hint_key(commit.position),
            commit_to_json(rewritten),
            xx=True,  # only a hint that exists: readers fall back to MongoDB otherwise
            keepttl=True,
        )
        changed += 1
    # The cached head (hash, and a snapshot that may hold plain text) is read again from the log.
    await services.redis.delete(names.stream_head_key(stream_id))
    if changed:
        report.streams += 1
        report.commits += changed
    return None


def _subject(stream_id: str, commits: list[Commit]) -> str | None:
    if stream_id.startswith("user-"):
        return stream_id.removeprefix("user-")
    first = commits[0].events[0] if commits and commits[0].events else None
    if first is None or first.type != "TaskCreated":
        return None
    return str(first.data["owner_id"])


def _tampered(services: Services, commits: list[Commit], journal: dict[str, str]) -> str | None:
    """Why the stream may not be rewritten: a commit's content does not match its own hash, or
    a link is broken other than by an earlier rewrite."""
    chain = services.store.chain
    before_hash, before_id = "", ""
    for commit in commits:
        if not hmac.compare_digest(commit.hash, chain.sign(commit)):
            return f"version {commit.first_version}: content does not match its hash"
        linked = commit.prev_hash == before_hash or journal.get(commit.prev_hash) == before_id
        if not linked:
            return f"version {commit.first_version}: link to the previous commit is broken"
        before_hash, before_id = commit.hash, commit.commit_id
    return None


async def _record(services: Services, commit: Commit, journal: dict[str, str]) -> None:
    """Remember the hash about to be replaced (before replacing it: a crash in between is
    then recognised as this command's doing)."""
    doc: dict[str, Any] = {
        "_id": commit.hash,
        "commit_id": commit.commit_id,
        "stream_id": commit.stream_id,
    }
    with contextlib.suppress(DuplicateKeyError):
        await services.db[names.LOG_REWRITES].insert_one(doc)
    journal[commit.hash] = commit.commit_id


async def _rekey_reservations(services: Services) -> int:
    """Re-key reservations made under the plain address by its keyed hash; how many."""
    reservations = reservations_of(services.db)
    done = 0
    for doc in await reservations.find({}).to_list():
        address = str(doc["_id"])
        if "@" not in address:
            continue
        rekeyed = {**doc, "_id": services.accounts.email_digest(address)}
        with contextlib.suppress(DuplicateKeyError):
            await reservations.insert_one(rekeyed)
        await reservations.delete_one({"_id": address})
        done += 1
    async for key in services.redis.scan_iter(match=names.email_user_key("*@*"), count=1000):
        await services.redis.delete(key)  # plain addresses in key names (expiring caches)
    return done
