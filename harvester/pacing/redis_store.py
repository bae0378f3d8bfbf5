"""A key's rate budget in Redis, shared by every host that spends the key.

Four keys per budget, under one hash tag (a Redis Cluster keeps them on one node):
``…:ends``, the last calls' ends (a sorted set; its score counts the calls up to and including
each member, which says when it ended and for how many calls: ``count:time:calls``),
``…:leases``, the calls admitted whose attempts have not ended (score: when the lease lapses),
``…:pause``, a key that exists while the key's budget is paused (its TTL is the pause), and
``…:epoch``, a key that exists while Redis still holds the budget's history.

Every operation is one Lua script, so it is atomic for all windows at once, and every time in
it comes from Redis's own clock (``TIME``): the hosts' clocks never meet, so skew between them
does not matter. Redis 7 replicates a script's effects, not the script, which is what lets a
script that writes read ``TIME``; on Redis 5 and 6, ``redis.replicate_commands()`` asks for
that mode (it is the default since 5 and a no-op since 7).

The rule is :mod:`harvester.pacing.limiter`'s: a reservation leases a place (checked and leased
in one script); the *end*, run when the attempt is over, moves the lease to the ends with the
time of that moment; a lease that lapsed counts as ended when it lapsed.

A Redis that restarted lost whatever it held (``…:epoch`` is gone): the first script after
that treats the calls before the server started (``uptime_in_seconds`` of ``INFO``) as having
spent the window in full, with as many calls as the smallest window holds still in flight until
their leases would have lapsed, so a restart cannot double a window. A budget that simply
expired (idle for longer than its longest window and lease) has nothing to lose. Not covered:
``FLUSHALL`` on a Redis that keeps running, an eviction policy that drops the keys (use
``noeviction``), a snapshot restored from before the last calls.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from harvester.errors import BudgetUnavailable, UsageError
from harvester.job.model import REDIS_PASSWORD_ENV
from harvester.pacing.protocol import Admission

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["END", "RESERVE", "RedisStore", "shown_url"]

CONNECT_TIMEOUT_SECONDS = 5.0
RETRIES = 8  # about 3 s of backoff: a restart is ridden out
RETRY_CAP_SECONDS = 0.5
KEEP_SLACK_SECONDS = 2.0  # past the longest window and lease (a grace end runs ahead of now)

# KEYS: ends, leases, pause, epoch. ARGV: lease id, lease seconds, grace seconds (END), keep
# milliseconds, then calls and seconds per window.
_PROLOGUE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease_seconds, keep = tonumber(ARGV[2]), tonumber(ARGV[4])
local windows, most, fewest, longest = {}, 0, math.huge, 0
for i = 5, #ARGV, 2 do
  local calls, seconds = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  windows[#windows + 1] = {calls, seconds}
  most, fewest, longest = math.max(most, calls), math.min(fewest, calls), math.max(longest, seconds)
end

local function parse(member)
  local _, at, n = string.match(member, '^(%d+):([^:]+):(%d+)$')
  return tonumber(at), tonumber(n)
end

local function last_end()
  local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #top == 0 then return 0, nil end
  local at = parse(top[1])
  return tonumber(top[2]), at
end

-- n calls ended at `at`, or at the last end if that is later (the order keeps lookups exact)
local function add_end(at, n)
  local c, latest = last_end()
  if latest ~= nil and latest > at then at = latest end
  c = c + n
  redis.call('ZADD', KEYS[1], c, c .. ':' .. string.format('%.17g', at) .. ':' .. n)
end

-- when the k-th most recent call ended (nil: fewer calls are recorded)
local function nth(k, top)
  local rows = redis.call(
    'ZRANGEBYSCORE', KEYS[1], top - k + 1, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #rows == 0 then return nil end
  local at, n = parse(rows[1])
  if tonumber(rows[2]) - n <= top - k then return at end
  return nil
end

local function weight(member)
  local lost = string.match(member, '^lost:(%d+)$')
  if lost then return tonumber(lost), true end
  return 1, false
end

-- a budget whose history Redis no longer holds: what a restart lost is counted as spent
local function vouch()
  if redis.call('EXISTS', KEYS[4]) == 1 then return end
  local info = redis.call('INFO', 'server')
  local started = now - tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  if started + lease_seconds + longest > now then
    add_end(started, most)
    redis.call('ZADD', KEYS[2], started + lease_seconds, 'lost:' .. fewest)
  end
  redis.call('SET', KEYS[4], '1')
end

local function keep_all(top)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', top - most)
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], keep) end
end

vouch()
"""

# Returns {'ok', 1} when leased, else {seconds to wait (a string: Redis would truncate a Lua
# number to an integer), 1 when that wait is exact}.
RESERVE = (
    _PROLOGUE
    + """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES')
for i = 1, #lapsed, 2 do add_end(tonumber(lapsed[i + 1]), (weight(lapsed[i]))) end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local live, ours, first = 0, 0, math.huge
local leases = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #leases, 2 do
  local n, lost = weight(leases[i])
  live = live + n
  if not lost then ours = ours + 1 end
  first = math.min(first, tonumber(leases[i + 1]))
end
local ready = now
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then ready = now + paused / 1000 end
local top = last_end()
local full = false
for _, w in ipairs(windows) do
  local need = w[1] - live
  if need <= 0 then
    full = true
  else
    local at = nth(need, top)
    if at ~= nil then ready = math.max(ready, at + w[2]) end
  end
end
if full then
  local exact = 0
  if ours == 0 then exact = 1 end
  return {tostring(math.max(ready, first) - now), exact}
end
if ready > now then return {tostring(ready - now), 1} end
redis.call('ZADD', KEYS[2], now + lease_seconds, ARGV[1])
keep_all(top)
return {'ok', 1}
"""
)

# The attempt is over: its lease goes (lapsed or not), its end counts from now plus the grace.
END = (
    _PROLOGUE
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
add_end(now + tonumber(ARGV[3]), 1)
keep_all((last_end()))
return 1
"""
)

# KEYS: pause. ARGV: milliseconds. Extends the pause, never shortens it.
PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 1
"""


def shown_url(url: str) -> str:
    """The Redis URL without user or password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore:
    """A key's budget in Redis; see the module docstring. Build it with :meth:`connect`."""

    def __init__(
        self,
        client: Redis,
        url: str,
        digest: str,
        windows: Sequence[tuple[int, float]],
        lease_seconds: float,
    ) -> None:
        self._client = client
        self._where = shown_url(url)
        prefix = f"harvester:budget:{{{digest}}}"
        self._keys = [f"{prefix}:{name}" for name in ("ends", "leases", "pause", "epoch")]
        self._windows = [str(value) for window in windows for value in window]
        self._lease = str(lease_seconds)
        longest = max(seconds for _, seconds in windows)
        self._keep_ms = str(int((longest + lease_seconds + KEEP_SLACK_SECONDS) * 1000))
        self._reserve: AsyncScript = client.register_script(RESERVE)
        self._end: AsyncScript = client.register_script(END)
        self._pause: AsyncScript = client.register_script(PAUSE)
        self._ids = f"{uuid.uuid4().hex[:16]}-"  # lease ids unique across hosts and processes
        self._leases = 0

    def _args(self, lease: str, grace: float = 0.0) -> list[str]:
        return [lease, self._lease, repr(grace), self._keep_ms, *self._windows]

    @classmethod
    async def connect(
        cls, url: str, digest: str, windows: Sequence[tuple[int, float]], lease_seconds: float
    ) -> RedisStore:
        """Connect and check the server answers; BudgetUnavailable (exit 2) if it does not."""
        try:
            import redis.asyncio
        except ImportError as exc:
            raise UsageError(
                "api.rate_budget names Redis, which needs the redis extra: "
                "pip install 'harvester[redis]'"
            ) from exc
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        # A restart (a second or two) is ridden out; a Redis gone for longer stops the run.
        # Every script is safe to run twice: a lease is keyed by its id, an end counted twice
        # only holds a place longer.
        client = redis.asyncio.from_url(
            url,
            password=os.environ.get(REDIS_PASSWORD_ENV) or None,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=Retry(ExponentialBackoff(cap=RETRY_CAP_SECONDS, base=0.05), RETRIES),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        store = cls(client, url, digest, windows, lease_seconds)
        try:
            await store._call(client.ping())
        except BudgetUnavailable as exc:
            await client.aclose()
            raise BudgetUnavailable(str(exc), before_any_call=True) from exc.__cause__
        return store

    async def _call(self, pending: Any) -> Any:
        """Await one Redis call; its failures become BudgetUnavailable."""
        from redis.exceptions import RedisError

        try:
            return await pending
        except (RedisError, OSError, TimeoutError) as exc:
            raise BudgetUnavailable(
                f"the rate budget at {self._where} cannot be reached "
                f"({type(exc).__name__}); stopping rather than pacing alone"
            ) from exc

    async def reserve(self) -> Admission:
        """Run the reservation script; a fresh lease id per attempt."""
        self._leases += 1
        lease = f"{self._ids}{self._leases}"
        answer, exact = await self._call(self._reserve(keys=self._keys, args=self._args(lease)))
        if answer == b"ok":
            return lease
        return (float(answer), int(exact) == 1)  # 'inf' parses too

    async def end(self, lease: str, grace: float = 0.0) -> None:
        """Run the end script: the call counts from now (Redis's time) plus ``grace``."""
        await self._call(self._end(keys=self._keys, args=self._args(lease, grace)))

    async def free(self, lease: str) -> None:
        """Drop the lease."""
        await self._call(self._client.zrem(self._keys[1], lease))

    async def pause(self, seconds: float) -> None:
        """Extend the key's pause."""
        ms = max(1, int(seconds * 1000))
        await self._call(self._pause(keys=self._keys[2:3], args=[str(ms)]))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
