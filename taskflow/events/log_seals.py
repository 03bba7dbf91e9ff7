"""Log seals: a running digest over every position of the log, and checking the log against it.

Each commit's hash chains it to the previous commit of its own stream, so removing a stream's
last commit (or a whole stream) leaves every chain intact. The seal covers the log as a whole
(docs/event-log.md, "Log seals"): digest_N = SHA-256(digest_{N-1} || entry_N), where entry_N
is the commit at position N (its position and chain hash) or the gap there. The digest at N
depends only on the log up to N, so whoever computes it, in whatever batches, gets the same
value; a seal is that digest at one position, with an HMAC keyed like the chain, so a seal
cannot be forged or recomputed without the key. The projector inserts seals
(`projections/log_seal.py`); `LogAuditor` checks the log against them in one ordered pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskflow.events.chain import HashChain, StreamChecker
from taskflow.events.records import BrokenLink, Commit

GENESIS = "0" * 64
"""The digest of the empty log (before position 1)."""


def log_digest(previous: str, commit: Commit) -> str:
    """The running digest of the log once `commit` (a commit or a gap) follows `previous`."""
    entry = f"{commit.position}:gap" if commit.is_gap else f"{commit.position}:{commit.hash}"
    return hashlib.sha256(bytes.fromhex(previous) + entry.encode()).hexdigest()


@dataclass(frozen=True)
class Seal:
    """The log's digest at `position`, signed with the log's key."""

    position: int
    digest: str
    mac: str

    @classmethod
    def made(cls, chain: HashChain, position: int, digest: str) -> Seal:
        return cls(position, digest, chain.seal_mac(position, digest))

    def document(self, at: datetime) -> dict[str, Any]:
        return {"_id": self.position, "digest": self.digest, "mac": self.mac, "at": at}

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Seal:
        return cls(int(doc["_id"]), str(doc.get("digest", "")), str(doc.get("mac", "")))


@dataclass(frozen=True)
class SealProblem:
    """A seal the log does not match, or that is not genuine."""

    position: int
    reason: str


@dataclass
class LogAudit:
    """What one pass over the log found: broken stream chains, seal problems, missing positions.

    `missing` holds ranges (first, last) of positions with no document although they lie at or
    below the highest seal or the settled head: every such position was once settled (holes are
    sealed with gaps), so a missing one was removed. `unsettled` are holes above both, which
    may still be in flight. `sealed_to`: the highest position a genuine seal covers; positions
    above it are guarded only by the stream chains and by contiguity up to the settled head.
    """

    broken: list[BrokenLink] = field(default_factory=list)
    seal_problems: list[SealProblem] = field(default_factory=list)
    missing: list[tuple[int, int]] = field(default_factory=list)
    unsettled: list[tuple[int, int]] = field(default_factory=list)
    last_position: int = 0
    settled: int = 0
    sealed_to: int = 0
    seals: int = 0

    @property
    def ok(self) -> bool:
        return not (self.broken or self.seal_problems or self.missing)


class LogAuditor:
    """Follows the whole log in position order, with the seals merged in by position.

    Feed it every document with `add`, and each seal with `seal` as soon as the position it
    names is reached (after adding that position, or before adding the first one past it);
    `finish` takes the seals beyond the log's end. A seal that does not match is reported and
    the running digest continues from the seal's own (when genuine), so each interval between
    seals is judged on its own and a report points at the damaged one.
    """

    def __init__(self, chain: HashChain, settled: int) -> None:
        self._chain = chain
        self._checkers: dict[str, StreamChecker] = {}
        self._broken_streams: set[str] = set()
        self._holes: list[tuple[int, int]] = []
        self._digest = GENESIS
        self.audit = LogAudit(settled=settled)

    def add(self, commit: Commit) -> None:
        last = self.audit.last_position
        if commit.position > last + 1:
            self._holes.append((last + 1, commit.position - 1))
        self._digest = log_digest(self._digest, commit)
        self.audit.last_position = commit.position
        if commit.is_gap or commit.stream_id in self._broken_streams:
            return
        checker = self._checkers.setdefault(commit.stream_id, StreamChecker(self._chain))
        link = checker.check(commit)
        if link is not None:  # the first broken link of a stream; later ones would follow it
            self._broken_streams.add(commit.stream_id)
            self.audit.broken.append(link)

    def seal(self, seal: Seal) -> None:
        """Check a seal at or below the position last added (below: it seals a missing one)."""
        self.audit.seals += 1
        if seal.mac != self._chain.seal_mac(seal.position, seal.digest):
            self._problem(seal, "the seal's MAC does not verify: a forged or altered seal")
            return
        self.audit.sealed_to = max(self.audit.sealed_to, seal.position)
        if seal.position > self.audit.last_position:
            self._problem(seal, "the sealed position is missing from the log: it was removed")
        elif self._digest != seal.digest:
            self._problem(
                seal,
                "the log up to here does not match its seal: a commit or gap at or below it "
                "(after the previous seal) was removed, altered or inserted",
            )
        self._digest = seal.digest  # judge the next interval on its own

    def finish(self, beyond: list[Seal]) -> LogAudit:
        """The report, given the seals above the log's last position."""
        for seal in beyond:
            self.seal(seal)
        audit = self.audit
        bound = max(audit.sealed_to, audit.settled)
        if audit.last_position < bound:
            self._holes.append((audit.last_position + 1, bound))
        for first, last in self._holes:
            if first <= bound:
                audit.missing.append((first, min(last, bound)))
            if last > bound:
                audit.unsettled.append((max(first, bound + 1), last))
        return audit

    def _problem(self, seal: Seal, reason: str) -> None:
        self.audit.seal_problems.append(SealProblem(seal.position, reason))

    def snapshot(self) -> dict[str, Any]:
        """Everything the auditor knows so far, as JSON-ready data: a pass interrupted after
        the last position added resumes from it (`resumed`) instead of from the start."""
        audit = self.audit
        return {
            "streams": {s: [c.version, c.hash] for s, c in self._checkers.items()},
            "broken_streams": sorted(self._broken_streams),
            "holes": self._holes,
            "digest": self._digest,
            "audit": {
                "broken": [link.model_dump() for link in audit.broken],
                "seal_problems": [[p.position, p.reason] for p in audit.seal_problems],
                "last_position": audit.last_position,
                "settled": audit.settled,
                "sealed_to": audit.sealed_to,
                "seals": audit.seals,
            },
        }

    @classmethod
    def resumed(cls, chain: HashChain, snapshot: dict[str, Any], settled: int) -> LogAuditor:
        """An auditor that goes on where `snapshot` was taken (with the settled head now)."""
        auditor = cls(chain, settled)
        for stream_id, (version, hash_) in snapshot["streams"].items():
            checker = auditor._checkers[stream_id] = StreamChecker(chain)
            checker.version, checker.hash = int(version), str(hash_)
        auditor._broken_streams = set(snapshot["broken_streams"])
        auditor._holes = [(int(a), int(b)) for a, b in snapshot["holes"]]
        auditor._digest = str(snapshot["digest"])
        saved = snapshot["audit"]
        audit = auditor.audit
        audit.broken = [BrokenLink.model_validate(link) for link in saved["broken"]]
        audit.seal_problems = [SealProblem(int(p), str(r)) for p, r in saved["seal_problems"]]
        audit.last_position = int(saved["last_position"])
        audit.settled = max(settled, int(saved["settled"]))
        audit.sealed_to = int(saved["sealed_to"])
        audit.seals = int(saved["seals"])
        return auditor
