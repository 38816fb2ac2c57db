"""Per-user rate limits and quotas: every send is admitted by one Lua script in one round trip.

What is limited, per user (0 = unlimited; `limits_for` applies LimitOverride rows):
- messages per minute, hour and UTC day (sends, edits and regenerations all count);
- replies in flight (queued or streaming) at once;
- prompt plus completion tokens per UTC day.

The script checks all of them and records (counts the windows, takes the in-flight slot) only
if every one passes, so a send refused at the minute window burns nothing of the hour or day
budget, and concurrent sends through any number of processes are admitted exactly up to the
limit: Redis runs one script at a time.

Windows are fixed and aligned to the clock (minute, hour, UTC day since the epoch): one counter
per window, exact, O(1) memory and two commands each. A sliding log would be smoother at the
edges but keeps one entry per message, up to MAX_MESSAGES_PER_DAY (100 000) entries per user for
the day window alone. The price of fixed windows is the edge: up to twice the per-minute limit
can pass in the 60 s around a minute boundary; the hour and day windows still bound the total.
The time is this process's clock (as llm_app.worker's slots); hosts running NTP agree to far
less than a window.

The in-flight cap is a sorted set of slot tokens (the reply's `Message.stream_key` hex) scored
by their expiry. The end of a reply releases its slot (hooks.reply_finished); a slot whose
release was lost (a process killed between the commit and the hook, Redis down then) expires
after MESSAGE_PROCESSING_TIMEOUT + RATE_LIMIT_SLOT_MARGIN_SECONDS (60 s unless set) and is
purged by the next admission. A dead worker's reply is ended by the reaper, which releases it.

Keys: `<SERVICE_NAME>:limits:{<user id>}:<what>`; the braces keep one user's keys in one Redis
Cluster slot, as a script needs. Every key expires: a window's after its end, the in-flight set
with its last slot, the token counter a day after its day.

Limits are read from the settings and LimitOverride through an in-process cache of
LIMITS_CACHE_SECONDS (5 s): a change in the admin applies to every process within 5 s.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from redis.commands.core import Script

from messages_app.errors import RateLimited
from messages_app.models import LimitOverride
from messageservice import metrics
from messageservice.redis_clients import sync_redis

LIMITS_CACHE_SECONDS = 5.0
# Before a refused in-flight send is tried again: replies take seconds, and a slot frees the
# moment one ends, so a short wait (capped by the oldest slot's expiry).
IN_FLIGHT_RETRY_SECONDS = 2.0
_WINDOWS = (("minute", 60), ("hour", 3600), ("day", 86400))
_DAY = 86400


@dataclass(frozen=True)
class Limits:
    """One user's limits; 0 = unlimited."""

    per_minute: int
    per_hour: int
    per_day: int
    in_flight: int
    daily_tokens: int


_FIELDS = tuple(f.name for f in fields(Limits))


@dataclass
class Admission:
    """An admitted send: what it recorded (for `refund`) and the figures of its tightest limit.

    `recorded` is False when limits are off: nothing was counted, nothing is to be undone.
    `remaining` is -1 when no limit applies.
    """

    user_id: int
    token: str
    cost: int
    recorded: bool
    window_keys: tuple[str, ...] = ()
    limit_value: int = 0
    remaining: int = -1
    reset: float = 0.0
    _refunded: bool = field(default=False, repr=False)


def _defaults() -> Limits:
    return Limits(
        per_minute=settings.MAX_MESSAGES_PER_MINUTE,
        per_hour=settings.MAX_MESSAGES_PER_HOUR,
        per_day=settings.MAX_MESSAGES_PER_DAY,
        in_flight=settings.MAX_REPLIES_IN_FLIGHT,
        daily_tokens=settings.DAILY_TOKEN_QUOTA,
    )


def _most_generous(values: list[int]) -> int:
    return 0 if 0 in values else max(values)


def _resolve(defaults: Limits, rows: list[dict[str, Any]]) -> Limits:
    """The defaults, then the groups' rows (of several, the most generous value of each field),
    then the user's own row; a null field keeps what came before."""
    user_rows = [r for r in rows if r["user_id"] is not None]
    group_rows = [r for r in rows if r["user_id"] is None]
    values = {name: getattr(defaults, name) for name in _FIELDS}
    for name in _FIELDS:
        from_groups = [r[name] for r in group_rows if r[name] is not None]
        if from_groups:
            values[name] = _most_generous(from_groups)
        for row in user_rows:
            if row[name] is not None:
                values[name] = row[name]
    return Limits(**values)


@dataclass
class _Overrides:
    """Every LimitOverride row, as loaded at `expires - LIMITS_CACHE_SECONDS`: the table is
    small (set by hand in the admin), so a process holds it whole and a send reads no row."""

    expires: float
    by_user: dict[int, dict[str, Any]]
    by_group: dict[int, dict[str, Any]]
    # user id -> (expiry, that user's group ids): read only while group overrides exist.
    groups_of: dict[int, tuple[float, frozenset[int]]] = field(default_factory=dict)


_overrides: _Overrides | None = None
_cache_lock = threading.Lock()


def _loaded_overrides(now: float) -> _Overrides:
    global _overrides
    current = _overrides
    if current is not None and current.expires > now:
        return current
    rows = list(LimitOverride.objects.values("user_id", "group_id", *_FIELDS))
    loaded = _Overrides(
        expires=now + LIMITS_CACHE_SECONDS,
        by_user={r["user_id"]: r for r in rows if r["user_id"] is not None},
        by_group={r["group_id"]: r for r in rows if r["group_id"] is not None},
    )
    with _cache_lock:
        _overrides = loaded
    return loaded


def _user_id(user: Any) -> int:
    return int(user) if isinstance(user, int) else int(user.pk)


def limits_for(user: Any) -> Limits:
    """The limits of `user` (a user or a user id): settings overridden by LimitOverride.

    Every override row is held in each process for LIMITS_CACHE_SECONDS (one query per
    process per period, none per send); while group overrides exist, a user's groups are
    read once per period too. The settings are read on every call."""
    user_id = _user_id(user)
    now = time.monotonic()
    overrides = _loaded_overrides(now)
    rows = []
    if overrides.by_group:
        cached = overrides.groups_of.get(user_id)
        if cached is None or cached[0] <= now:
            group_ids = frozenset(
                get_user_model()
                .groups.through.objects.filter(user_id=user_id)
                .values_list("group_id", flat=True)
            )
            if len(overrides.groups_of) > 10_000:
                overrides.groups_of.clear()
            cached = overrides.groups_of[user_id] = (now + LIMITS_CACHE_SECONDS, group_ids)
        rows = [overrides.by_group[g] for g in cached[1] if g in overrides.by_group]
    own = overrides.by_user.get(user_id)
    if own is not None:
        rows.append(own)
    return _resolve(_defaults(), rows) if rows else _defaults()


def forget() -> None:
    """Drop the cached overrides (tests; an admin change applies within 5 s anyway)."""
    global _overrides
    with _cache_lock:
        _overrides = None


# KEYS: 1-3 the minute, hour and day counters of the current windows, 4 the in-flight set,
#       5 today's token counter.
# ARGV: 1 now, 2 cost, 3-5 the window limits, 6 the in-flight cap, 7 the token quota,
#       8 the slot token, 9 the slot's lifetime, 10-12 seconds to the end of each window,
#       13 seconds to the end of the UTC day, 14 IN_FLIGHT_RETRY_SECONDS.
# Returns {1, limit_value, remaining, reset} of the tightest window when admitted (remaining -1:
# no window limits), or {0, name, retry_after, limit_value, remaining, reset} when refused:
# the refusing limit that lifts last. Numbers with fractions travel as strings.
_ADMIT = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local names = {'minute', 'hour', 'day'}
local refused, retry, refused_limit, refused_remaining = nil, -1, 0, 0
local best_limit, best_remaining, best_reset = 0, -1, 0
for i = 1, 3 do
  local limit = tonumber(ARGV[2 + i])
  if limit > 0 then
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    local reset = tonumber(ARGV[9 + i])
    if used + cost > limit then
      if reset > retry then
        refused, retry, refused_limit = names[i], reset, limit
        refused_remaining = math.max(limit - used, 0)
      end
    elseif best_remaining < 0 or limit - used - cost < best_remaining then
      best_limit, best_remaining, best_reset = limit, limit - used - cost, reset
    end
  end
end
local cap = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[4]) >= cap then
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local wait = math.min(tonumber(ARGV[14]), tonumber(oldest[2]) - now)
  if wait > retry then
    refused, retry, refused_limit, refused_remaining = 'in_flight', wait, cap, 0
  end
end
local quota = tonumber(ARGV[7])
if quota > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= quota then
  local reset = tonumber(ARGV[13])
  if reset > retry then
    refused, retry, refused_limit, refused_remaining = 'tokens', reset, quota, 0
  end
end
if refused then
  return {0, refused, tostring(retry), refused_limit, refused_remaining, tostring(retry)}
end
for i = 1, 3 do
  redis.call('INCRBY', KEYS[i], cost)
  redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[9 + i])) + 1)
end
local hold = tonumber(ARGV[9])
redis.call('ZADD', KEYS[4], now + hold, ARGV[8])
redis.call('EXPIRE', KEYS[4], math.ceil(hold) + 1)
return {1, best_limit, best_remaining, tostring(best_reset)}
"""

# KEYS: the window counters the admission counted, then its in-flight set. ARGV: cost, token.
# A window that has ended meanwhile (its key expired) is left alone: never a negative count.
_REFUND = """
for i = 1, #KEYS - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('DECRBY', KEYS[i], ARGV[1])
  end
end
redis.call('ZREM', KEYS[#KEYS], ARGV[2])
return 1
"""


@cache
def _scripts(client: Any) -> tuple[Script, Script]:
    return client.register_script(_ADMIT), client.register_script(_REFUND)


def _prefix(user_id: int) -> str:
    return f"{settings.SERVICE_NAME}:limits:{{{user_id}}}"


def _in_flight_key(user_id: int) -> str:
    return f"{_prefix(user_id)}:in-flight"


def _tokens_key(user_id: int, now: float) -> str:
    return f"{_prefix(user_id)}:tokens:{int(now // _DAY)}"


def _slot_hold_seconds() -> float:
    margin = float(settings.RATE_LIMIT_SLOT_MARGIN_SECONDS)
    return float(settings.MESSAGE_PROCESSING_TIMEOUT) + margin


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def admit(user: Any, *, token: str, cost: int = 1) -> Admission:
    """Admit one send of `user` (a user or a user id) whose reply's slot is named `token`, or
    raise RateLimited, recording nothing. One Redis round trip; redis.RedisError if Redis is
    down (the caller saves nothing). With ENABLE_RATE_LIMITS off everything is admitted and
    nothing is recorded. A send that then fails must be `refund`ed."""
    user_id = _user_id(user)
    if not settings.ENABLE_RATE_LIMITS:
        return Admission(user_id=user_id, token=token, cost=cost, recorded=False)
    limits = limits_for(user_id)
    now = time.time()
    prefix = _prefix(user_id)
    window_keys = tuple(f"{prefix}:{name}:{int(now // size)}" for name, size in _WINDOWS)
    resets = [size - now % size for _, size in _WINDOWS]
    admit_script, _ = _scripts(sync_redis())
    answer = admit_script(
        keys=[*window_keys, _in_flight_key(user_id), _tokens_key(user_id, now)],
        args=[
            repr(now),
            cost,
            limits.per_minute,
            limits.per_hour,
            limits.per_day,
            limits.in_flight,
            limits.daily_tokens,
            token,
            repr(_slot_hold_seconds()),
            *(repr(r) for r in resets),
            repr(_DAY - now % _DAY),
            repr(IN_FLIGHT_RETRY_SECONDS),
        ],
    )
    if int(answer[0]) == 0:
        metrics.rate_limit_rejected(_text(answer[1]))
        raise RateLimited(
            limit=_text(answer[1]),
            retry_after=max(float(_text(answer[2])), 0.0),
            limit_value=int(answer[3]),
            remaining=int(answer[4]),
            reset=max(float(_text(answer[5])), 0.0),
        )
    return Admission(
        user_id=user_id,
        token=token,
        cost=cost,
        recorded=True,
        window_keys=window_keys,
        limit_value=int(answer[1]),
        remaining=int(answer[2]),
        reset=float(_text(answer[3])),
    )


def refund(admission: Admission) -> None:
    """Undo `admission`, whose send failed or turned out a repeat: its counts and its slot.
    Idempotent; one round trip."""
    if not admission.recorded or admission._refunded:
        return
    admission._refunded = True
    _, refund_script = _scripts(sync_redis())
    refund_script(
        keys=[*admission.window_keys, _in_flight_key(admission.user_id)],
        args=[admission.cost, admission.token],
    )


@contextmanager
def admitted(user: Any, *, token: str, cost: int = 1) -> Iterator[Admission]:
    """`admit`, and `refund` if the block raises: a send that saves nothing counts nothing."""
    admission = admit(user, token=token, cost=cost)
    try:
        yield admission
    except BaseException:
        refund(admission)
        raise


def release(user_id: int, token: str) -> None:
    """Free the in-flight slot `token` of `user_id` (its reply ended). One command."""
    sync_redis().zrem(_in_flight_key(user_id), token)


def tokens_add(user_id: int, n: int) -> None:
    """Add `n` prompt plus completion tokens to `user_id`'s usage of today (UTC)."""
    if n <= 0:
        return
    now = time.time()
    key = _tokens_key(user_id, now)
    with sync_redis().pipeline(transaction=False) as pipe:
        pipe.incrby(key, n)
        pipe.expire(key, math.ceil(_DAY - now % _DAY) + _DAY)
        pipe.execute()


def reply_ended(user_id: int, token: str, tokens: int) -> None:
    """A reply of `user_id` ended: free its slot and count its tokens, in one round trip.
    Nothing when limits are off (nothing was recorded)."""
    if not settings.ENABLE_RATE_LIMITS:
        return
    now = time.time()
    key = _tokens_key(user_id, now)
    with sync_redis().pipeline(transaction=False) as pipe:
        pipe.zrem(_in_flight_key(user_id), token)
        if tokens > 0:
            pipe.incrby(key, tokens)
            pipe.expire(key, math.ceil(_DAY - now % _DAY) + _DAY)
        pipe.execute()


def usage(user: Any) -> dict[str, int]:
    """What `user` has used now: messages in the current windows, replies in flight, tokens
    today (for the admin, support and tests)."""
    user_id = _user_id(user)
    now = time.time()
    prefix = _prefix(user_id)
    client = sync_redis()
    with client.pipeline(transaction=False) as pipe:
        for name, size in _WINDOWS:
            pipe.get(f"{prefix}:{name}:{int(now // size)}")
        pipe.zcount(_in_flight_key(user_id), now, "+inf")
        pipe.get(_tokens_key(user_id, now))
        minute, hour, day, in_flight, tokens = pipe.execute()
    return {
        "minute": int(minute or 0),
        "hour": int(hour or 0),
        "day": int(day or 0),
        "in_flight": int(in_flight or 0),
        "tokens": int(tokens or 0),
    }
