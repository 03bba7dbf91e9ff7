"""Operator and auditor commands behind the `taskflow` CLI: each returns a process exit code."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from taskflow.auditing import progress_bar, projection_statuses, tick, verify_log_and_views
from taskflow.auth.refresh import RefreshTokens
from taskflow.bootstrap import (
    ensure_indexes,
    open_services,
    rebuild_read_models,
)
from taskflow.commands.aggregates import USER
from taskflow.commands.erasure import handle_erase_user
from taskflow.commands.errors import UserNotFoundError
from taskflow.commands.runner import Context, execute
from taskflow.commands.user import GrantRole
from taskflow.commands.user_handlers import find_user_by_email
from taskflow.events.codec import commit_to_json
from taskflow.legacy_rewrite import rewrite_legacy
from taskflow.projections.erasure_purge import purge_caches_of
from taskflow.projections.rebuild import RebuildVerificationError
from taskflow.services import Services
from taskflow.settings import Settings


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
            await purge_caches_of(services.redis, user_id)
        except UserNotFoundError:
            print(f"no user {user_id!r}", file=sys.stderr)
            return 1
    print(f"user {user_id}: {'erased' if outcome.changed else 'was erased already'}")
    return 0


async def keys_rotate(settings: Settings) -> int:
    """Re-wrap every data key under DATA_KEK_ACTIVE; then the other KEKs can be dropped."""
    async with _checked(settings) as services:
        with tqdm(desc="re-wrap", unit=" keys", file=sys.stderr) as bar:
            done = await services.keys.rotate(lambda n: tick(bar))
    print(
        f"keys rotate: {done} data keys re-wrapped under {settings.data_kek_active!r}; "
        "KEKs other than it may now be removed from DATA_KEKS"
    )
    return 0


async def audit_rewrite_legacy(settings: Settings) -> int:
    """Remove password hashes and seal personal data in commits written before this version."""
    async with _checked(settings) as services:
        await ensure_indexes(services)
        with progress_bar(await services.store.head_position(), "scan") as bar:
            report = await rewrite_legacy(services, lambda position: tick(bar))
    for refusal in report.refused:
        print(f"REFUSED {refusal}")
    print(
        f"rewrite-legacy: {report.commits} commits of {report.streams} streams rewritten, "
        f"{report.reservations} e-mail reservations re-keyed, {len(report.refused)} refused"
    )
    return 1 if report.refused else 0


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


async def audit_export(settings: Settings, after: int, out: TextIO) -> int:
    """NDJSON of the global feed after a position; resume with --after <last position>."""
    async with _checked(settings) as services:
        head = await services.store.head_position()
        with progress_bar(max(head - after, 0), "export") as bar:
            async for commit in services.store.read_all(after):
                out.write(commit_to_json(commit).decode() + "\n")
                bar.update(1)
    out.flush()
    return 0


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
        bar = progress_bar(await services.store.head_position(), "rebuild")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            result = await rebuild_read_models(services, progress)
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
