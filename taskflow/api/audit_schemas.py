"""Response shapes of the auditor endpoints: a task's history, pages of the log, the projections'
status and the verification jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from taskflow.api.contracts import Shape
from taskflow.events.records import Commit
from taskflow.projections.history import TaskHistoryEntry


class TaskHistoryPage(Shape):
    """A page of a task's history, oldest first."""

    items: list[TaskHistoryEntry]
    next: str | None = Field(description="pass as `after_version` for the following page")


class CommitPage(Shape):
    """Commits of the event log, in log order; gaps (unused positions) are passed over.

    Each event's `data` is its payload in the current schema (older schemas are upcast on
    read; no event shows a password hash). Personal fields (e-mail, display name, task title,
    description, tags) are stored encrypted under their user's data key and shown decrypted.
    Once that user is erased they cannot be: they are left out of `data`, and `data["~erased"]`
    lists their names, e.g. `{"task_id": "…", "status": "todo", …, "~erased": ["title",
    "description", "tags"]}`. Types, versions, positions, times, ids and metadata stay.
    """

    items: list[Commit]
    next_after: int | None = Field(
        description="pass as `after` for the following page: the last position this page "
        "accounts for, gaps included (null for a whole stream)"
    )
    end: bool = Field(
        description="true: the page reaches the log's settled head, nothing more is there yet "
        "(poll again later from `next_after`); false: more follows, even after an empty page"
    )


class ProjectionState(Shape):
    """How far one projection has applied the log, and who holds its lease."""

    name: str
    position: int
    head: int = Field(description="the log's head when it was read")
    lag: int = Field(ge=0, description="positions the projection is behind the head")
    lease_holder: str | None
    lease_expires_at: datetime | None


class ProjectionList(Shape):
    """Every projection of every read-model version, and the log seal."""

    head: int
    items: list[ProjectionState]


class VerificationProgress(Shape):
    """How far a verification has got: the log's pass, then the read models."""

    phase: Literal["log", "read-models", "done"]
    position: int
    head: int


class VerificationResult(Shape):
    """What `taskflow audit verify` reports: each finding as its line, and the counts."""

    ok: bool
    summary: str
    sealed: str = Field(description="how far the seals reach, and what guards the rest")
    findings: list[str] = Field(description="BROKEN, SEAL, MISSING, MISMATCH (and UNSETTLED) lines")
    positions: int
    broken_chains: int
    seal_problems: int
    missing_positions: int
    read_model_mismatches: int
    sealed_to: int


class Verification(Shape):
    """A verification job: running, or ended with its result."""

    id: str
    state: Literal["running", "passed", "failed", "error", "interrupted", "superseded"] = Field(
        description="`interrupted`: its process stopped (or has not been heard of for 30 s); "
        "`superseded`: paused that long, it gave way to a newer job"
    )
    requested_by: str
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    progress: VerificationProgress
    result: VerificationResult | None
    error: str | None


class VerificationList(Shape):
    """The latest verifications, newest first."""

    items: list[Verification]
