"""What the audits report (`audit verify` and the projections' status): plain data, shared by
the CLI (operations.py), the API's verification jobs (audit_jobs.py) and the code that makes
them (auditing.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from taskflow.events.log_seals import LogAudit
from taskflow.projections.verify import ViewMismatch


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
        return log_findings(self.audit) + [
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
        return sealed_to(self.audit)


Progress = Callable[[int, int], None]
"""Told (position reached, head when the pass began) as a pass over the log goes on."""


def log_findings(audit: LogAudit) -> list[str]:
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


def sealed_to(audit: LogAudit) -> str:
    """How far the seals reach, and what guards the positions above them."""
    sealed = f"sealed up to position {audit.sealed_to} ({audit.seals} seals)"
    if audit.sealed_to >= audit.last_position:
        return f"{sealed}: the whole log"
    return (
        f"{sealed}; positions {audit.sealed_to + 1}-{audit.last_position} are covered only by "
        "the per-stream hash chains and contiguity up to the settled head "
        f"({audit.settled}) until the next seal"
    )


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
