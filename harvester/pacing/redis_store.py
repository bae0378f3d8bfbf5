"""A key's rate budget in Redis, shared by every host that spends the key.

Three keys per budget, under one hash tag (a Redis Cluster keeps them on one node):
``…:starts``, a sorted set of the calls sent (member: the lease id, score: when it was sent),
``…:leases``, a sorted set of calls admitted but not sent (score: when the lease lapses), and
``…:pause``, a key that exists while the key's budget is paused (its TTL is the pause).

Every operation is one Lua script, so it is atomic for all windows at once, and every time in
it comes from Redis's own clock (``TIME``): the hosts' clocks never meet, so skew between them
does not matter. Redis 7 replicates a script's effects, not the script, which is what lets a
script that writes read ``TIME``; on Redis 5 and 6, ``redis.replicate_commands()`` asks for
that mode (it is the default since 5 and a no-op since 7).

A reservation is checked and leased in one script; the *stamp*, run when the request's headers
go out, moves the lease to the starts with the time of that moment: a call counts from when it
is sent, as in the in-process limiter.
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

__all__ = ["RESERVE", "STAMP", "RedisStore", "shown_url"]

CONNECT_TIMEOUT_SECONDS = 5.0

_PROLOGUE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: starts, leases, pause. ARGV: lease id, lease seconds, then calls and seconds per window.
# Returns {'ok', unsent} when leased, else {seconds to wait (a string: Redis would truncate a
# Lua number to an integer), unsent}; 'inf' when unsent calls alone fill a window.
RESERVE = (
    _PROLOGUE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local unsent = redis.call('ZCARD', KEYS[2])
local ready = now
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then ready = now + paused / 1000 end
local longest = 0
for i = 3, #ARGV, 2 do
  local calls, seconds = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if seconds > longest then longest = seconds end
  local need = calls - unsent
  if need <= 0 then return {'inf', unsent} end
  local nth = redis.call('ZREVRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
  if #nth > 0 then ready = math.max(ready, tonumber(nth[2]) + seconds) end
end
if ready > now then return {tostring(ready - now), unsent} end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
local keep = math.ceil((longest + lease) * 1000)
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return {'ok', unsent}
"""
)

# KEYS: starts, leases. ARGV: lease id, milliseconds to keep the log. The start is recorded
# even when the lease had lapsed: the call is going out either way.
STAMP = (
    _PROLOGUE
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
        self._keys = [f"{prefix}:starts", f"{prefix}:leases", f"{prefix}:pause"]
        self._windows = [str(value) for window in windows for value in window]
        self._lease = lease_seconds
        longest = max(seconds for _, seconds in windows)
        self._keep_ms = str(int((longest + lease_seconds) * 1000) + 1)
        self._reserve: AsyncScript = client.register_script(RESERVE)
        self._stamp: AsyncScript = client.register_script(STAMP)
        self._pause: AsyncScript = client.register_script(PAUSE)
        self._ids = f"{uuid.uuid4().hex[:16]}-"  # lease ids unique across hosts and processes
        self._leases = 0

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
        client = redis.asyncio.from_url(
            url,
            password=os.environ.get(REDIS_PASSWORD_ENV) or None,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
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
        answer, unsent = await self._call(
            self._reserve(keys=self._keys, args=[lease, str(self._lease), *self._windows])
        )
        if answer == b"ok":
            return lease
        delay = float(answer)  # 'inf' parses too
        return (delay, int(unsent) == 0)

    async def stamp(self, lease: str) -> None:
        """Run the stamp script: the start, at Redis's time."""
        await self._call(self._stamp(keys=self._keys[:2], args=[lease, self._keep_ms]))

    async def free(self, lease: str) -> None:
        """Drop the lease."""
        await self._call(self._client.zrem(self._keys[1], lease))

    async def pause(self, seconds: float) -> None:
        """Extend the key's pause."""
        ms = max(1, int(seconds * 1000))
        await self._call(self._pause(keys=self._keys[2:], args=[str(ms)]))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
