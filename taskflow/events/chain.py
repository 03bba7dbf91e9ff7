"""The keyed hash chain that makes tampering with a stream evident (docs/event-log.md)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from taskflow.events.codec import canonical_bytes
from taskflow.events.records import BrokenLink, Commit


class HashChain:
    """Signs commits with an HMAC key that lives in configuration, never in the database."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, commit: Commit) -> str:
        return hmac.new(self._key, canonical_bytes(commit), hashlib.sha256).hexdigest()

    def seal_mac(self, position: int, digest: str) -> str:
        """The MAC of a log seal (events/log_seals.py): the log's digest at `position`."""
        message = f"log-seal:{position}:{digest}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify_stream(self, commits: Iterable[Commit]) -> BrokenLink | None:
        """The first link of one stream's commits (in version order) that does not hold."""
        checker = StreamChecker(self)
        for commit in commits:
            broken = checker.check(commit)
            if broken:
                return broken
        return None


class StreamChecker:
    """Follows one stream commit by commit: versions contiguous, each hash links to the last."""

    def __init__(self, chain: HashChain) -> None:
        self._chain = chain
        self.version = 0
        self.hash = ""

    def check(self, commit: Commit) -> BrokenLink | None:
        reason = self._problem(commit)
        self.version, self.hash = commit.last_version, commit.hash
        if reason is None:
            return None
        return BrokenLink(
            stream_id=commit.stream_id,
            version=commit.first_version,
            position=commit.position,
            reason=reason,
        )

    def _problem(self, commit: Commit) -> str | None:
        versions = [event.version for event in commit.events]
        expected = list(range(commit.first_version, commit.last_version + 1))
        if commit.first_version != self.version + 1 or versions != expected:
            return f"versions {versions} do not follow version {self.version}"
        if commit.prev_hash != self.hash:
            return "previous-hash link does not match the preceding commit"
        if not hmac.compare_digest(commit.hash, self._chain.sign(commit)):
            return "content does not match its hash"
        return None
