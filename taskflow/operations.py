"""Operator and auditor commands behind the `taskflow` CLI: each returns a process exit code."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from typing import Never, TextIO

from tqdm import tqdm

from taskflow import names
from taskflow.bootstrap import Services, open_services
from taskflow.commands.aggregates import USER
from taskflow.commands.runner import Context, execute
from taskflow.commands.user import GrantRole
from taskflow.commands.user_handlers import find_user_by_email
from taskflow.events.codec import commit_to_json
from taskflow.events.log_seals import LogAudit
from taskflow.projections.catalog import log_projections, projections
from taskflow.projections.rebuild import RebuildVerificationError, rebuild
from taskflow.projections.verify import verify_read_models
from taskflow.projections.worker import read_model_versions
from taskflow.settings import Settings


def _bar(total: int, what: str) -> tqdm[Never]:
    """A progress bar with rate and ETA, on stderr so stdout stays machine-readable."""
    return tqdm(total=total, desc=what, unit=" commits", file=sys.stderr, dynamic_ncols=True)


def _tick(bar: tqdm[Never]) -> None:
    bar.update(1)


async def grant_role(settings: Settings, email: str, role: str) -> int:
    """Grant a role (recorded as a UserRoleGranted event); it reaches tokens at the next login."""
    async with open_services(settings) as services:
        user = await find_user_by_email(services.store, services.db, services.redis, email)
        if user is None:
            print(f"no user registered as {email!r}", file=sys.stderr)
            return 1
        context = Context(actor="operator", request_id=uuid.uuid4().hex, correlation_id="cli")
        command = GrantRole.model_validate({"user_id": user.user_id, "role": role})
        outcome = await execute(
            services.store, USER, user.user_id, command, context, datetime.now(UTC)
        )
        print(f"{email}: role {role} {'granted' if outcome.changed else 'already held'}")
        return 0


async def audit_verify(settings: Settings) -> int:
    """Check the log (stream chains, seals, contiguity) and every task view; 1 on any finding."""
    async with open_services(settings) as services:
        head = await services.store.head_position()
        with _bar(head, "log") as bar:
            audit = await services.store.audit(lambda position: _tick(bar))
        mismatches = []
        for version in sorted(await read_model_versions(services)):
            mismatches += await verify_read_models(services, version)
    for line in _log_findings(audit):
        print(line)
    for mismatch in mismatches:
        print(
            f"MISMATCH {mismatch.model} task {mismatch.task_id}: log says version "
            f"{mismatch.expected_version}, read model has {mismatch.found_version}"
        )
    ok = audit.ok and not mismatches
    missing = sum(last - first + 1 for first, last in audit.missing)
    print(
        f"audit verify: {'OK' if ok else 'FAILED'} — {audit.last_position} positions, "
        f"{len(audit.broken)} broken chains, {len(audit.seal_problems)} seal problems, "
        f"{missing} missing positions, {len(mismatches)} read-model mismatches"
    )
    print(_sealed_to(audit))
    return 0 if ok else 1


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
    async with open_services(settings) as services:
        head = await services.store.head_position()
        with _bar(max(head - after, 0), "export") as bar:
            async for commit in services.store.read_all(after):
                out.write(commit_to_json(commit).decode() + "\n")
                bar.update(1)
    out.flush()
    return 0


async def projections_status(settings: Settings) -> int:
    """Each projection's position, the head, the lag and the lease holder."""
    async with open_services(settings) as services:
        head = await services.store.head_position()
        rows = [("projection", "position", "head", "lag", "lease holder", "lease expires")]
        versions = sorted(await read_model_versions(services))
        targets = log_projections(services)
        targets += [p for version in versions for p in projections(services, version)]
        for projection in targets:
            position = await projection.position()
            lease = await _latest_lease(services, projection.name)
            rows.append(
                (
                    projection.name,
                    str(position),
                    str(head),
                    str(head - position),
                    str(lease.get("holder", "-")),
                    str(lease.get("expires_at", "-")),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def projections_rebuild(settings: Settings, name: str) -> int:
    """Rebuild the task read models without downtime (see taskflow/projections/rebuild.py)."""
    if name not in {"task_views", "all"}:
        print(f"unknown projection {name!r}: try task_views", file=sys.stderr)
        return 2
    async with open_services(settings) as services:
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
