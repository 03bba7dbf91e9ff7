"""`audit verify` as a background job of the API: one at a time across every API process,
its progress and result in MongoDB, so that any process answers for it.

**One at a time.** Jobs take numbered *slots*: starting one inserts `{_id: n + 1}` into
`audit_verification_slots`, where `n` is the latest slot, and only while the latest slot's job
is not running. Two processes starting at once insert the same `_id`: the unique key lets
exactly one win (docs/concurrency.md: never a conditional update), and the other answers with the
winner's job. The job document itself is written only by the process that runs it (its
progress every `HEARTBEAT_SECONDS`, then its result), so plain updates are safe.

**A process that dies** leaves its job `running` with a heartbeat that stops: a job not heard
of for `STALE_SECONDS` reads as `interrupted`, and the next start takes the next slot. A runner
that was only paused that long finds the newer slot at its next heartbeat and stops
(`superseded`), so two never go on together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo import DESCENDING, ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from taskflow import names
from taskflow.audit_reports import Progress, VerifyReport
from taskflow.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

Document = dict[str, Any]
Clock = Callable[[], datetime]
Verify = Callable[[Progress], Coroutine[Any, Any, VerifyReport]]

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 30.0
RUNNING, PASSED, FAILED, ERROR = "running", "passed", "failed", "error"
INTERRUPTED, SUPERSEDED = "interrupted", "superseded"


class SupersededError(Exception):
    """A newer job took the next slot while this one was paused: it stops."""


@dataclass
class _Progress:
    """What the running job has reached, written with each heartbeat."""

    phase: str = "log"
    position: int = 0
    head: int = 0

    def at(self, position: int, head: int) -> None:
        self.position, self.head = position, max(head, position)

    def as_document(self) -> Document:
        return {"phase": self.phase, "position": self.position, "head": self.head}


@dataclass
class AuditJobs:
    """The verification jobs of one deployment (the log's database)."""

    db: AsyncDatabase[Document]
    clock: Clock = field(default=lambda: datetime.now(UTC))
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    stale_seconds: float = STALE_SECONDS

    @property
    def jobs(self) -> AsyncCollection[Document]:
        return self._collection(names.AUDIT_VERIFICATIONS)

    @property
    def slots(self) -> AsyncCollection[Document]:
        return self._collection(names.AUDIT_VERIFICATION_SLOTS)

    def _collection(self, name: str) -> AsyncCollection[Document]:
        return self.db.get_collection(
            name,
            write_concern=WriteConcern("majority", j=True),
            read_preference=ReadPreference.PRIMARY,  # any process reads what another wrote
        )

    async def start(self, requested_by: str) -> tuple[Document, bool]:
        """A new running job, True; or the job already running (or that won the race to
        start), False."""
        latest = await self._latest_slot()
        if latest is not None:
            running = await self.jobs.find_one({"_id": latest["job_id"]})
            if running is not None and self.state(running) == RUNNING:
                return running, False
        slot = 1 if latest is None else int(latest["_id"]) + 1
        now = self.clock()
        job: Document = {
            "_id": uuid.uuid4().hex,
            "slot": slot,
            "state": RUNNING,
            "requested_by": requested_by,
            "started_at": now,
            "heartbeat_at": now,
            "finished_at": None,
            "progress": _Progress().as_document(),
            "result": None,
            "error": None,
        }
        # The job first, then its slot: whoever reads a slot finds its job.
        await self.jobs.insert_one(job)
        try:
            await self.slots.insert_one({"_id": slot, "job_id": job["_id"], "at": now})
        except DuplicateKeyError:
            await self.jobs.delete_one({"_id": job["_id"]})  # never named by a slot
            winner = await self.slots.find_one({"_id": slot})
            assert winner is not None  # slots are never deleted
            won = await self.jobs.find_one({"_id": winner["job_id"]})
            assert won is not None
            return won, False
        return job, True

    async def _latest_slot(self) -> Document | None:
        found = await self.slots.find().sort("_id", DESCENDING).limit(1).to_list()
        return found[0] if found else None

    async def get(self, job_id: str) -> Document | None:
        return await self.jobs.find_one({"_id": job_id})

    async def latest(self, count: int) -> list[Document]:
        """The last `count` jobs, newest first (by slot: a job that lost its start is none)."""
        slots = await self.slots.find().sort("_id", DESCENDING).limit(count).to_list()
        jobs = {doc["_id"]: doc async for doc in self.jobs.find({"_id": {"$in": _ids(slots)}})}
        return [jobs[slot["job_id"]] for slot in slots if slot["job_id"] in jobs]

    def state(self, job: Document) -> str:
        """The job's state; a running one not heard of for `stale_seconds` is interrupted."""
        state = str(job["state"])
        if state == RUNNING and self.clock() - _utc(job["heartbeat_at"]) > timedelta(
            seconds=self.stale_seconds
        ):
            return INTERRUPTED
        return state

    async def run(self, job: Document, verify: Verify) -> None:
        """Run `verify` as `job`: a heartbeat with its progress, then its result."""
        progress = _Progress()
        work = asyncio.create_task(verify(progress.at))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=self.heartbeat_seconds)
                if not work.done():
                    await self._beat(job, progress)
            report = work.result()
        except SupersededError:
            await cancel_and_wait(work)
            await self._finish(job, SUPERSEDED, progress)
        except asyncio.CancelledError:  # the process is shutting down
            await cancel_and_wait(work)
            await asyncio.shield(self._finish(job, INTERRUPTED, progress))
            raise
        except Exception as exc:
            log.exception("audit_verification_failed", job=job["_id"])
            await self._finish(job, ERROR, progress, error=repr(exc))
        else:
            progress.phase = "done"
            await self._finish(job, PASSED if report.ok else FAILED, progress, report)

    async def _beat(self, job: Document, progress: _Progress) -> None:
        if await self.slots.find_one({"_id": int(job["slot"]) + 1}) is not None:
            raise SupersededError(job["_id"])
        if progress.phase == "log" and progress.head and progress.position >= progress.head:
            progress.phase = "read-models"
        update = {"heartbeat_at": self.clock(), "progress": progress.as_document()}
        await self.jobs.update_one({"_id": job["_id"]}, {"$set": update})

    async def _finish(
        self,
        job: Document,
        state: str,
        progress: _Progress,
        report: VerifyReport | None = None,
        error: str | None = None,
    ) -> None:
        now = self.clock()
        update = {
            "state": state,
            "heartbeat_at": now,
            "finished_at": now,
            "progress": progress.as_document(),
            "result": None if report is None else report_document(report),
            "error": error,
        }
        await self.jobs.update_one({"_id": job["_id"]}, {"$set": update})


def report_document(report: VerifyReport) -> Document:
    """A verification's result as the API shows it: the CLI's lines and their counts."""
    audit = report.audit
    return {
        "ok": report.ok,
        "summary": report.summary(),
        "sealed": report.sealed(),
        "findings": report.findings(),
        "positions": audit.last_position,
        "broken_chains": len(audit.broken),
        "seal_problems": len(audit.seal_problems),
        "missing_positions": report.missing_positions,
        "read_model_mismatches": len(report.mismatches),
        "sealed_to": audit.sealed_to,
    }


def _ids(slots: list[Document]) -> list[str]:
    return [str(slot["job_id"]) for slot in slots]


def _utc(moment: datetime) -> datetime:
    """BSON dates are UTC; a client opened without tz_aware hands them back naive."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
