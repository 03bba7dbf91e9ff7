"""Operator and auditor commands behind the `taskflow` CLI: each returns a process exit code."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Never, TextIO, TypeVar

import orjson
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from tqdm import tqdm

from taskflow import names
from taskflow.auth.refresh import RefreshTokens
from taskflow.bootstrap import Services, ensure_indexes, open_services
from taskflow.commands.aggregates import USER
from taskflow.commands.errors import UserNotFoundError
from taskflow.commands.runner import Context, execute
from taskflow.commands.user import GrantRole
from taskflow.commands.user_handlers import find_user_by_email
from taskflow.events.codec import commit_to_json
from taskflow.events.log_seals import LogAudit
from taskflow.privacy.erasure import handle_erase_user
from taskflow.privacy.rewrite import rewrite_legacy
from taskflow.projections.catalog import log_projections, projections
from taskflow.projections.rebuild import RebuildVerificationError, rebuild
from taskflow.projections.verify import ViewMismatch, verify_read_models
from taskflow.projections.worker import read_model_versions
from taskflow.settings import Settings

T = TypeVar("T")
# Tries of one audit pass before `audit verify` gives up (waiting 1, 2, 4, 8 s between them).
AUDIT_ATTEMPTS = 5


def _bar(total: int, what: str) -> tqdm[Never]:
    """A progress bar with rate and ETA, on stderr so stdout stays machine-readable."""
    return tqdm(total=total, desc=what, unit=" commits", file=sys.stderr, dynamic_ncols=True)


def _tick(bar: tqdm[Never]) -> None:
    bar.update(1)


@asynccontextmanager
async def _checked(settings: Settings) -> AsyncIterator[Services]:
    """The services, once the KEKs are known to read this deployment's data keys (KekError)."""
    async with open_services(settings) as services:
        await services.keys.check_keks()
        yield services


def _operator_context() -> Context:
    return Context(actor="operator", request_id=uuid.uuid4().hex, correlation_id="cli")


async def grant_role(settings: Settings, email: str, role: str) -> int:
    """Grant a role (recorded as a UserRoleGranted event); it reaches tokens at the next login."""
    async with _checked(settings) as services:
        user = await find_user_by_email(services.accounts, email)
        if user is None:
            print(f"no user registered as {email!r}", file=sys.stderr)
            return 1
        context = _operator_context()
        command = GrantRole.model_validate({"user_id": user.user_id, "role": role})
        outcome = await execute(
            services.store, USER, user.user_id, command, context, datetime.now(UTC)
        )
        print(f"{email}: role {role} {'granted' if outcome.changed else 'already held'}")
        return 0


async def erase_user(settings: Settings, user_id: str) -> int:
    """Erase a user (docs/privacy.md); erasing again finishes an interrupted erasure."""
    async with _checked(settings) as services:
        await ensure_indexes(services)
        refresh = RefreshTokens(services.db, services.redis, settings.refresh_token_ttl_seconds)
        try:
            outcome = await handle_erase_user(
                services.accounts,
                services.keys,
                refresh,
                user_id=user_id,
                context=_operator_context(),
            )
        except UserNotFoundError:
            print(f"no user {user_id!r}", file=sys.stderr)
            return 1
    print(f"user {user_id}: {'erased' if outcome.changed else 'was erased already'}")
    return 0


async def keys_rotate(settings: Settings) -> int:
    """Re-wrap every data key under DATA_KEK_ACTIVE; then the other KEKs can be dropped."""
    async with _checked(settings) as services:
        with tqdm(desc="re-wrap", unit=" keys", file=sys.stderr) as bar:
            done = await services.keys.rotate(lambda n: _tick(bar))
    print(
        f"keys rotate: {done} data keys re-wrapped under {settings.data_kek_active!r}; "
        "KEKs other than it may now be removed from DATA_KEKS"
    )
    return 0


async def audit_rewrite_legacy(settings: Settings) -> int:
    """Remove password hashes and seal personal data in commits written before this version."""
    async with _checked(settings) as services:
        await ensure_indexes(services)
        with _bar(await services.store.head_position(), "scan") as bar:
            report = await rewrite_legacy(services, lambda position: _tick(bar))
    for refusal in report.refused:
        print(f"REFUSED {refusal}")
    print(
        f"rewrite-legacy: {report.commits} commits of {report.streams} streams rewritten, "
        f"{report.reservations} e-mail reservations re-keyed, {len(report.refused)} refused"
    )
    return 1 if report.refused else 0


@dataclass(frozen=True)
class VerifyReport:
    """What `audit verify` found: the log's audit and the read models' mismatches."""

    audit: LogAudit
    mismatches: list[ViewMismatch]

    @property
    def ok(self) -> bool:
        return self.audit.ok and not self.mismatches

    @property
    def missing_positions(self) -> int:
        return sum(last - first + 1 for first, last in self.audit.missing)

    def findings(self) -> list[str]:
        """One line per finding (and per unsettled range, which is not one)."""
        return _log_findings(self.audit) + [
            f"MISMATCH {mismatch.model} task {mismatch.task_id}: log says version "
            f"{mismatch.expected_version}, read model has {mismatch.found_version}"
            for mismatch in self.mismatches
        ]

    def summary(self) -> str:
        audit = self.audit
        return (
            f"audit verify: {'OK' if self.ok else 'FAILED'} — {audit.last_position} positions, "
            f"{len(audit.broken)} broken chains, {len(audit.seal_problems)} seal problems, "
            f"{self.missing_positions} missing positions, {len(self.mismatches)} read-model "
            "mismatches"
        )

    def sealed(self) -> str:
        return _sealed_to(self.audit)


Progress = Callable[[int, int], None]
"""Told (position reached, head when the pass began) as a pass over the log goes on."""


async def audit_verify(settings: Settings, state_file: Path | None = None) -> int:
    """Check the log (stream chains, seals, contiguity) and every task view; 1 on any finding.

    Both are streamed passes over the log, each read bounded by the socket timeout. A pass that
    fails (a timeout, a server restart) is retried, the log's from where it last saved its
    state (every `AUDIT_SAVE_EVERY` positions), so a long audit beside running projectors ends.
    With `state_file` the state is also kept on disk: a verify that was stopped resumes there.
    """
    async with _checked(settings) as services:
        report = await verify_log_and_views(services, state_file)
    for line in report.findings():
        print(line)
    print(report.summary())
    print(report.sealed())
    return 0 if report.ok else 1


async def verify_log_and_views(
    services: Services, state_file: Path | None = None, progress: Progress | None = None
) -> VerifyReport:
    """The log's audit, then every read-model version checked against the log (each step
    retried after a server error). `progress` follows the log's pass; without it a progress
    bar on stderr does (the CLI). Also what the API's verification jobs run (audit_jobs.py)."""
    audit = await _audit_log(services, state_file, progress)
    mismatches: list[ViewMismatch] = []
    for version in sorted(await _retrying(lambda: read_model_versions(services))):

        async def check(version: int = version) -> list[ViewMismatch]:
            return await verify_read_models(services, version)

        mismatches += await _retrying(check)
    return VerifyReport(audit, mismatches)


async def _audit_log(
    services: Services, state_file: Path | None, progress: Progress | None = None
) -> LogAudit:
    """The log's audit, resumed from `state_file` if it holds one, and retried from the last
    saved state when a read fails; the state file is removed once the audit is complete."""
    saved = _load_state(state_file)
    if saved is not None:
        print(f"resuming after position {saved['audit']['last_position']}", file=sys.stderr)

    async def save(state: dict[str, Any]) -> None:
        nonlocal saved
        saved = state
        _store_state(state_file, state)

    async def one_pass() -> LogAudit:
        head = await services.store.head_position()
        if progress is not None:
            return await services.store.audit(
                lambda position: progress(position, head), resume=saved, save=save
            )
        with _bar(head, "log") as bar:
            return await services.store.audit(lambda position: _tick(bar), resume=saved, save=save)

    audit = await _retrying(one_pass)
    _store_state(state_file, None)
    return audit


def _load_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    state: dict[str, Any] = orjson.loads(path.read_bytes())
    return state


def _store_state(path: Path | None, state: dict[str, Any] | None) -> None:
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


async def _retrying(step: Callable[[], Awaitable[T]]) -> T:
    """`step`, tried again after a server error (1 s, 2 s, 4 s...) up to `AUDIT_ATTEMPTS` times."""
    for attempt in range(1, AUDIT_ATTEMPTS + 1):
        try:
            return await step()
        except (PyMongoError, RedisError) as exc:
            if attempt == AUDIT_ATTEMPTS:
                raise
            print(f"audit: {exc!r}; trying again ({attempt}/{AUDIT_ATTEMPTS})", file=sys.stderr)
            await asyncio.sleep(2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _log_findings(audit: LogAudit) -> list[str]:
    lines = [
        f"BROKEN stream {link.stream_id} at version {link.version} "
        f"(position {link.position}): {link.reason}"
        for link in audit.broken
    ]
    lines += [f"SEAL at position {p.position}: {p.reason}" for p in audit.seal_problems]
    lines += [
        f"MISSING positions {first}-{last}: no commit or gap, below the highest seal or the "
        "settled head, so it was removed"
        for first, last in audit.missing
    ]
    lines += [
        f"UNSETTLED positions {first}-{last}: above the settled head, possibly still being "
        "written (not a finding)"
        for first, last in audit.unsettled
    ]
    return lines


def _sealed_to(audit: LogAudit) -> str:
    """How far the seals reach, and what guards the positions above them."""
    sealed = f"sealed up to position {audit.sealed_to} ({audit.seals} seals)"
    if audit.sealed_to >= audit.last_position:
        return f"{sealed}: the whole log"
    return (
        f"{sealed}; positions {audit.sealed_to + 1}-{audit.last_position} are covered only by "
        "the per-stream hash chains and contiguity up to the settled head "
        f"({audit.settled}) until the next seal"
    )


async def audit_export(settings: Settings, after: int, out: TextIO) -> int:
    """NDJSON of the global feed after a position; resume with --after <last position>."""
    async with _checked(settings) as services:
        head = await services.store.head_position()
        with _bar(max(head - after, 0), "export") as bar:
            async for commit in services.store.read_all(after):
                out.write(commit_to_json(commit).decode() + "\n")
                bar.update(1)
    out.flush()
    return 0


@dataclass(frozen=True)
class ProjectionStatus:
    """Where one projection stands: its position, the log's head, and its lease."""

    name: str
    position: int
    head: int
    lease_holder: str | None
    lease_expires_at: datetime | None

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)


async def projection_statuses(services: Services) -> list[ProjectionStatus]:
    """Every projection of every read-model version, and the log's own (the seal)."""
    head = await services.store.head_position()
    versions = sorted(await read_model_versions(services))
    targets = log_projections(services)
    targets += [p for version in versions for p in projections(services, version)]
    statuses = []
    for projection in targets:
        lease = await _latest_lease(services, projection.name)
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


async def projections_status(settings: Settings) -> int:
    """Each projection's position, the head, the lag and the lease holder."""
    async with open_services(settings) as services:
        statuses = await projection_statuses(services)
    rows = [("projection", "position", "head", "lag", "lease holder", "lease expires")]
    rows += [
        (
            status.name,
            str(status.position),
            str(status.head),
            str(status.head - status.position),
            status.lease_holder or "-",
            "-" if status.lease_expires_at is None else str(status.lease_expires_at),
        )
        for status in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def projections_rebuild(settings: Settings, name: str) -> int:
    """Rebuild the task read models without downtime (see taskflow/projections/rebuild.py)."""
    if name not in {"task_views", "all"}:
        print(f"unknown projection {name!r}: try task_views", file=sys.stderr)
        return 2
    async with _checked(settings) as services:
        bar = _bar(await services.store.head_position(), "rebuild")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            result = await rebuild(services, progress)
        except RebuildVerificationError as exc:
            bar.close()
            print(f"rebuild verification failed, reads stay on the current version: {exc}")
            return 1
        bar.close()
    print(
        f"read models rebuilt: version {result.old_version} → {result.new_version} "
        f"at position {result.position}"
    )
    return 0


async def _latest_lease(services: Services, name: str) -> dict[str, object]:
    docs = await services.db[names.LEASES].find({"name": name}).sort("term", -1).limit(1).to_list()
    return docs[0] if docs else {}
