"""Per-account password throttling: a progressive back-off counted in Redis, reset on success.

Policy (docs/operations.md, "Login throttling"), on top of the per-address rate limit:

- every password attempt on an account counts as a failure *before* the password is checked
  (so parallel guesses count too), and a success wipes the count;
- LOGIN_FREE_FAILURES failures in a row (default 5) cost nothing; each attempt after them sets a
  wait of 1, 2, 4, ... seconds, capped at LOGIN_BACKOFF_CAP_SECONDS (default 60);
- an attempt during a wait is answered 429 with Retry-After, its password is not checked (a
  guess there learns nothing) and it does not lengthen the wait;
- the count is forgotten a day after the last attempt.

Bounds: an attacker gets the free guesses, then one guess per cap at most (1,440 a day per
account at 60 s), whatever the number of addresses; and can keep the owner out for at most the
cap after the attacker's own last guess: the owner's next attempt after it is checked, and a
success resets everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from taskflow import names

FORGET_AFTER_SECONDS = 24 * 3600

# KEYS[1]: the account's counter (hash: n failures in a row, u waiting until, in ms).
# ARGV: now (ms), free failures, cap (ms), forget after (s). Returns the ms left to wait (0: go).
_ATTEMPT = """
local now = tonumber(ARGV[1])
local waiting_until = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
if waiting_until > now then return waiting_until - now end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free = tonumber(ARGV[2])
if n > free then
  local wait = math.min(1000 * 2 ^ (n - free - 1), tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'u', now + wait)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 0
"""


class AccountThrottledError(Exception):
    """Too many failed password attempts on this account: wait `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class AccountThrottle:
    """The back-off of password attempts per account (see the module docstring)."""

    redis: Redis
    free_failures: int
    cap_seconds: float

    async def attempt(self, account: str, now: datetime) -> None:
        """Count an attempt on `account`; AccountThrottledError while it must wait."""
        script = self.redis.register_script(_ATTEMPT)
        wait_ms = int(
            await script(
                keys=[names.login_throttle_key(account)],
                args=[
                    int(now.timestamp() * 1000),
                    self.free_failures,
                    int(self.cap_seconds * 1000),
                    FORGET_AFTER_SECONDS,
                ],
            )
        )
        if wait_ms > 0:
            raise AccountThrottledError(max(1, math.ceil(wait_ms / 1000)))

    async def succeeded(self, account: str) -> None:
        """The right password: the count starts again."""
        await self.redis.delete(names.login_throttle_key(account))
