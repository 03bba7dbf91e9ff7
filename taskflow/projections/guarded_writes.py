"""One batch's writes to the Redis read model, as one script: fenced, checked, applied, in one
round trip.

The script first compares the fence with the writer's lease term and the checkpoint with where
the writer's batch begins; only if both hold does it run the batch's writes and advance the
checkpoint. A script runs atomically in Redis, so nothing can move either key between the check
and the writes: a holder whose lease was taken over (a newer term raised the fence) or whose
Redis lost its data (the checkpoint moved) writes nothing. This replaced a WATCH, an MGET and a
MULTI/EXEC, three round trips a pass for the same guarantee (docs/benchmarks.md, "Write-to-visible
latency").

The writes are recorded here as plain commands (their keys passed in KEYS, in order, so the
script names every key it touches) plus three conditional ones the script carries out itself:
a term leaving a task (dropped from the owner's terms once its set is empty), a tag count
going down (removed at zero), and the change feeds' origin (moved when the feeds' last write is
not where the batch begins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from taskflow.hot_redis import HotRedis, HotScript

Value = str | int | float | bytes

# KEYS: fence, checkpoint, then every recorded write's keys in order. ARGV: the term, the
# checkpoint the batch begins after, the checkpoint it ends at, then per write its name, its
# number of keys, its number of arguments, and the arguments.
_GUARDED = """
local term = tonumber(ARGV[1])
local fence = redis.call('GET', KEYS[1])
if fence and tonumber(fence) > term then return {0, 0} end
local at = tonumber(redis.call('GET', KEYS[2]) or '0')
if at ~= tonumber(ARGV[2]) then return {-1, at} end
if term > 0 and (not fence or tonumber(fence) < term) then redis.call('SET', KEYS[1], ARGV[1]) end
local k, a = 3, 4
while a <= #ARGV do
  local name, keys, args = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if name == '~term' then
    redis.call('SREM', KEYS[k], ARGV[a])
    if redis.call('EXISTS', KEYS[k]) == 0 then redis.call('ZREM', KEYS[k + 1], ARGV[a + 1]) end
  elseif name == '~tag' then
    if redis.call('HINCRBY', KEYS[k], ARGV[a], -1) <= 0 then
      redis.call('HDEL', KEYS[k], ARGV[a])
    end
  elseif name == '~origin' then
    if redis.call('GET', KEYS[k]) ~= ARGV[a] then redis.call('SET', KEYS[k + 1], ARGV[a]) end
  else
    local call = {}
    for i = 0, keys - 1 do call[#call + 1] = KEYS[k + i] end
    for i = 0, args - 1 do call[#call + 1] = ARGV[a + i] end
    redis.call(name, unpack(call))
  end
  k, a = k + keys, a + args
end
redis.call('SET', KEYS[2], ARGV[3])
return {1, tonumber(ARGV[3])}
"""


class Outcome(IntEnum):
    """What the script did with a batch."""

    FENCED = 0  # a newer term holds the fence: nothing written
    MOVED = -1  # the checkpoint is not where the batch begins: nothing written
    APPLIED = 1


@dataclass
class GuardedWrites:
    """A batch's writes, recorded in order, to run as one guarded script (see the module)."""

    keys: list[str] = field(default_factory=list)
    args: list[Value] = field(default_factory=list)

    def command(self, name: str, keys: Sequence[str], *args: Value) -> None:
        """A plain Redis command: `name`, then `keys`, then `args`."""
        self._record(name, keys, args)

    def drop_term(self, term_set: str, terms: str, task_id: str, term: str) -> None:
        """`task_id` no longer has `term`: out of the term's set, and out of the owner's terms
        once no task has it (Redis deletes an empty set)."""
        self._record("~term", (term_set, terms), (task_id, term))

    def drop_tag(self, tags: str, tag: str) -> None:
        """One task fewer with `tag`: its count goes down, and out of the hash at zero."""
        self._record("~tag", (tags,), (tag,))

    def reset_origin(self, written: str, origin: str, checkpoint: int) -> None:
        """Unless `written` holds `checkpoint`, set `origin` to it (the feeds' origin moves
        when batches were applied without feed entries, feed_writes.py)."""
        self._record("~origin", (written, origin), (checkpoint,))

    def _record(self, name: str, keys: Sequence[str], args: Sequence[Value]) -> None:
        self.keys.extend(keys)
        self.args.extend((name, len(keys), len(args), *args))


class GuardedScript:
    """The script, sent by EVALSHA (loaded on NOSCRIPT) on the process's pipelined connection:
    a batch's writes are many arguments, which hiredis packs in C (redis-py's pure-Python
    packing was the largest single cost of a projector pass, docs/benchmarks.md)."""

    def __init__(self, hot: HotRedis) -> None:
        self._hot = hot
        self._script = HotScript(_GUARDED)

    async def run(
        self,
        writes: GuardedWrites,
        *,
        fence: str,
        checkpoint: str,
        term: int,
        after: int,
        to: int,
    ) -> tuple[Outcome, int]:
        """Apply `writes` if the fence allows `term` and the checkpoint is at `after`, and move
        the checkpoint to `to`; the outcome and the checkpoint as the script found or left it."""
        status, at = await self._hot.evalsha(
            self._script, [fence, checkpoint, *writes.keys], [term, after, to, *writes.args]
        )
        return Outcome(int(status)), int(at)
