"""The audits themselves: `audit verify` (the log's audit, then the read models against the log,
retried after server errors, resumable) and the projections' status. Made from the composition
root's projections; run by the CLI (operations.py) and, handed over by the app factory, by the
API's verification jobs."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Never, TypeVar

import orjson
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tqdm import tqdm

from taskflow import names
from taskflow.audit_reports import Progress, ProjectionStatus, VerifyReport
from taskflow.bootstrap import log_projections, projections
from taskflow.events.log_seals import LogAudit
from taskflow.projections.verify import ViewMismatch, verify_read_models
from taskflow.projector import read_model_versions
from taskflow.services import Services

T = TypeVar("T")
# Tries of one audit pass before `audit verify` gives up (waiting 1, 2, 4, 8 s between them).
AUDIT_ATTEMPTS = 5


def progress_bar(total: int, what: str) -> tqdm[Never]:
    """A progress bar with rate and ETA, on stderr so stdout stays machine-readable."""
    return tqdm(total=total, desc=what, unit=" commits", file=sys.stderr, dynamic_ncols=True)


def tick(bar: tqdm[Never]) -> None:
    bar.update(1)


async def verify_log_and_views(
    services: Services, state_file: Path | None = None, progress: Progress | None = None
) -> VerifyReport:
    """The log's audit, then every read-model version checked against the log (each step
    retried after a server error). `progress` follows the log's pass; without it a progress
    bar on stderr does (the CLI). Also what the API's verification jobs run (audit_jobs.py)."""
    audit = await audit_log(services, state_file, progress)
    mismatches: list[ViewMismatch] = []
    for version in sorted(await retrying(lambda: read_model_versions(services))):

        async def check(version: int = version) -> list[ViewMismatch]:
            return await verify_read_models(services, version)

        mismatches += await retrying(check)
    return VerifyReport(audit, mismatches)


async def audit_log(
    services: Services, state_file: Path | None, progress: Progress | None = None
) -> LogAudit:
    """The log's audit, resumed from `state_file` if it holds one, and retried from the last
    saved state when a read fails; the state file is removed once the audit is complete."""
    saved = load_state(state_file)
    if saved is not None:
        print(f"resuming after position {saved['audit']['last_position']}", file=sys.stderr)

    async def save(state: dict[str, Any]) -> None:
        nonlocal saved
        saved = state
        store_state(state_file, state)

    async def one_pass() -> LogAudit:
        head = await services.store.head_position()
        if progress is not None:
            return await services.store.audit(
                lambda position: progress(position, head), resume=saved, save=save
            )
        with progress_bar(head, "log") as bar:
            return await services.store.audit(lambda position: tick(bar), resume=saved, save=save)

    audit = await retrying(one_pass)
    store_state(state_file, None)
    return audit


def load_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    state: dict[str, Any] = orjson.loads(path.read_bytes())
    return state


def store_state(path: Path | None, state: dict[str, Any] | None) -> None:
    """Keep `state` in `path` (atomically: a stop mid-write leaves the previous one); None
    removes it."""
    if path is None:
        return
    if state is None:
        path.unlink(missing_ok=True)
        return
    partial = path.with_suffix(".partial")
    partial.write_bytes(orjson.dumps(state))
    partial.replace(path)


async def retrying(step: Callable[[], Awaitable[T]]) -> T:
    """`step`, tried again after a server error (1 s, 2 s, 4 s...) up to `AUDIT_ATTEMPTS` times."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((PyMongoError, RedisError)),
        wait=wait_exponential(multiplier=1, min=1, max=8),
        stop=stop_after_attempt(AUDIT_ATTEMPTS),
        before_sleep=_say_retrying,
        reraise=True,
    ):
        with attempt:
            return await step()
    raise AssertionError("unreachable: tenacity re-raises the last failure")


def _say_retrying(state: RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome else None
    print(
        f"audit: {failure!r}; trying again ({state.attempt_number}/{AUDIT_ATTEMPTS})",
        file=sys.stderr,
    )


async def projection_statuses(services: Services) -> list[ProjectionStatus]:
    """Every projection of every read-model version, and the log's own (the seal)."""
    head = await services.store.head_position()
    versions = sorted(await read_model_versions(services))
    targets = log_projections(services)
    targets += [p for version in versions for p in projections(services, version)]
    statuses = []
    for projection in targets:
        lease = await latest_lease(services, projection.name)
        holder, expires = lease.get("holder"), lease.get("expires_at")
        statuses.append(
            ProjectionStatus(
                projection.name,
                await projection.position(),
                head,
                None if holder is None else str(holder),
                expires if isinstance(expires, datetime) else None,
            )
        )
    return statuses


async def latest_lease(services: Services, name: str) -> dict[str, object]:
    docs = await services.db[names.LEASES].find({"name": name}).sort("term", -1).limit(1).to_list()
    return docs[0] if docs else {}
