"""The Redis state store: a fleet's shared state, on redis-py's asyncio client (optional extra).

Install with ``pip install 'le_transport[redis]'``. Every operation is one round trip and atomic:
reads with their TTL, compare-and-set, compare-and-delete, the retry budget and the token bucket
run as Lua scripts on the server, with the server's clock (``TIME``), so processes on machines
whose clocks disagree still share one window and one bucket.

Every failure (refused, reset, timed out after ``op_timeout`` on the clock) is a
:class:`~le_transport.errors.StateStoreError`, whose message never holds the password; wrap the
store in :class:`~le_transport.state.FallbackStore` so that no call ever fails because Redis
did. An error Redis answers about one key's data (``WRONGTYPE``: a key of another type; a script
failing on a field it cannot count; a value that is no UTF-8, read on a client with
``decode_responses``) is a :class:`~le_transport.errors.StateDataError`, a
subclass naming the key: the store answered, so a ``FallbackStore`` treats it as that key's
damage, not as an outage of every key. A store that cannot work (a wrong ``clock`` or
``client``, a URL its parser would misread) is a :class:`~le_transport.errors.ConfigurationError`
when it is made, never an outage. Keys are ``{prefix}:{account}:{kind}:...``; a retry budget's
has its window after that (``...:10x3.0s``: its slot count and slot length), one per window.

A command sent twice. A client that retries (redis-py's ``Retry``: on by default for a
``redis.asyncio.Redis`` made by its constructor in recent redis-py releases, though not in 5.0,
the oldest the extra allows, so perhaps for a caller's ``client``; the store's own, made with
``from_url``, retries only if ``client_options`` or the URL ask for it) sends a command again
when its connection was reset before the reply came back, though the server may have run it.
Each operation is safe so, each as suits it:

- ``get`` and ``set`` without ``only_if`` change nothing, or the same, when run twice.
- ``add`` answers True when the key already holds exactly its value (a lock's value is unique
  per holder and attempt): no record is needed.
- A compare-and-set, a compare-and-delete, ``budget``, ``refund`` and ``reserve`` each carry
  an operation record: a key of their own, ``{prefix}:op:{<key>}:<mark>:<n>`` (under the
  prefix, in the Redis Cluster slot of the key it is about; ``<mark>`` is random, the store's
  in one process: a child of ``os.fork()`` makes its own, or it took its parent's records of
  other operations for its own and skipped them), that the script writes in the same
  atomic step as its change, kept for ``op_timeout`` and a second (the longest a client sends
  a command again: the store stops waiting for it then). A run that finds it changes nothing
  and answers what the first answered: a compare-and-set that stored answers True (a value
  the key holds could be another writer's equal one; the record is this operation's), a
  compare-and-delete that deleted answers True (its key is gone: only a record can tell), and
  deposits, a withdrawal, a refund or a token are counted once, not twice (a counter keeps no
  trace of who added to it). A run that changed nothing writes no record: run again, it is
  the same operation a little later. A key whose hash tag a record's name cannot carry (a
  tag holding a ``}``: a key ``a}b``, or any key under a prefix ``a}``) has its records named
  with a surrogate tag instead, four characters from ``@`` to ``O`` whose slot is the key's:
  ``{prefix}:op:{@KAN}:<mark>:<n>``. (A prefix holding a ``{`` that keeps the record's name
  from either tag, ``a{`` or ``{}``, gets no record: its scripts run as often as sent.)
- An unconditional ``delete`` sent again answers False: its key is gone either way.

Retries are not turned off instead: a caller's client is the caller's to configure, and a
caller may ask the store's own for them (they spare an outage for a connection reset once).
"""

from __future__ import annotations

import asyncio
import binascii
import inspect
import itertools
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_plus

from .._checks import is_async_callable, require_kind
from .._redact import REDACTED, Secret, is_secret_name, redact_cut, redact_url
from ..clock import Clock, RealClock, timeout_after
from ..errors import ConfigurationError, StateDataError, StateStoreError
from ..policies.budget import RetryBudget
from ..policies.pacing import MAX_QUEUE, TokenBucket
from .store import (
    MAX_TTL,
    Entry,
    check_bucket,
    check_budget,
    check_deposits,
    check_key,
    check_only_if,
    check_seconds,
    check_ttl,
    check_value,
)

__all__ = ["DEFAULT_OP_TIMEOUT", "DEFAULT_PREFIX", "RedisStore"]

_log = logging.getLogger("le_transport.state")

#: A loopback or same-zone Redis answers in well under a millisecond; a quarter second is an
#: outage, and a call waiting on shared state must not wait longer than that to go local.
DEFAULT_OP_TIMEOUT = 0.25
#: The default key prefix; set your own to share one Redis between applications.
DEFAULT_PREFIX = "le_transport"

_GET = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
"""

# What a script that changes state does first and last, with KEYS[2] its operation's record
# (see the module's docstring: a command sent again after its reply was lost) and its last ARGV
# how long the record is kept (ms). Without a KEYS[2], it runs as before (no record).
_SEEN = """
if KEYS[2] then
  local done = redis.call('GET', KEYS[2])
  if done then return RESULT end
end
"""
_NOTE = """
if KEYS[2] then redis.call('SET', KEYS[2], NOTED, 'PX', ARGV[#ARGV]) end
"""


def _once(body: str, result: str = "tonumber(done)", noted: str = "'1'") -> str:
    """A script made idempotent: ``body`` (``NOTE`` where its change was made, before it
    answers; the record's PX an ARGV after its own) takes effect at most once per operation
    record, and a run after the one that did answers what that one answered (``result``, from
    what it noted: ``noted``)."""
    note = _NOTE.replace("NOTED", noted)
    return _SEEN.replace("RESULT", result) + body.replace("NOTE\n", note.lstrip("\n"))


# Compare-and-set: ARGV[1] the value expected, ARGV[2] the new one, ARGV[3] its PX.
_SET_IF = _once("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  NOTE
  return 1
end
return 0
""")

# Set-if-absent, idempotent: ARGV[1] the value, ARGV[2] its PX. A key already holding exactly
# that value answers 1: a client that sends the command again after losing the reply (redis-py's
# Retry, on a connection reset after the server ran it) finds its own value, and must not read
# it as another holder's lock. Lock values are unique per holder and attempt, so no other
# holder's value is ever taken for one's own. (pcall: a key of another type holds something,
# which is no lock of ours.)
_ADD = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# Compare-and-delete: ARGV[1] the value expected.
_DELETE_IF = _once("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  NOTE
  return 1
end
return 0
""")

#: The longest PEXPIRE the scripts set, in milliseconds: MAX_TTL, as every stored value. A
#: budget's window or a bucket's refill may be far longer (a valid RetryBudget(window=1e16),
#: TokenBucket(burst=1e300)), and Redis refuses an expiry past its range or one Lua writes in
#: an exponent ("1e+19"): each script then failed, which a FallbackStore takes for an outage.
#: So the scripts cap it, and write it with '%d'. (1e15 is a whole number a double holds
#: exactly, far inside Redis' range.)
_MAX_EXPIRE_MS = round(MAX_TTL * 1000)

# RetryBudget's arithmetic (see policies/budget.py): counts per time slot in one hash, fields
# q:<slot> (first attempts) and r:<slot> (retries), whole numbers >= 0. The hash is the budget's
# for one window (RedisStore._budget_key: the key with the slot count and slot length), so all
# its slot numbers count slots of one length: on one hash, processes whose budgets differed in
# slot length (a rolling deploy changing the window, two applications on one prefix) read each
# other's slots as far outside their window and deleted them, and the fleet's budget vanished.
# Slots older than the window are dropped. So are slots a whole window or more ahead of the
# server's clock (written on a server whose clock ran ahead, before a failover; a clock stepped
# back): counted, they held the budget for as long as the clock took to catch up, each call's
# PEXPIRE keeping the key alive; a slot less than a window ahead is folded into the current one
# (counted, then aged out with it), as the pure policy counts a reading from the past in its
# newest slot. A field that is none of these (another prefix, a value that is no whole number
# >= 0) is dropped, not counted: it failed the script (an outage of every key, through a
# FallbackStore) or counted as a retry.
_BUDGET = _once(
    """
local ratio, floor = tonumber(ARGV[1]), tonumber(ARGV[2])
local slot_len, slots = tonumber(ARGV[3]), tonumber(ARGV[4])
local deposits, withdraw = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cur = math.floor(now / slot_len)
local oldest = cur - slots + 1
local slot = string.format('%d', cur)
local fields = redis.call('HGETALL', KEYS[1])
local req, ret = 0, 0
local ahead = {}
for i = 1, #fields, 2 do
  local f = fields[i]
  local kind = string.sub(f, 1, 2)
  local s = tonumber(string.sub(f, 3))
  local n = tonumber(fields[i + 1])
  if s == nil or n == nil or (kind ~= 'q:' and kind ~= 'r:') or n < 0 or n ~= math.floor(n)
     or s ~= math.floor(s) or s < oldest or s >= cur + slots then
    redis.call('HDEL', KEYS[1], f)
  else
    if s > cur then
      redis.call('HDEL', KEYS[1], f)
      ahead[kind] = (ahead[kind] or 0) + n
    end
    if kind == 'q:' then req = req + n else ret = ret + n end
  end
end
for kind, n in pairs(ahead) do
  if n > 0 then redis.call('HINCRBY', KEYS[1], kind .. slot, string.format('%d', n)) end
end
if deposits > 0 then
  redis.call('HINCRBY', KEYS[1], 'q:' .. slot, deposits)
  req = req + deposits
end
local taken = 0
if withdraw > 0 and ret + 1 <= ratio * req + floor + 1e-9 then
  redis.call('HINCRBY', KEYS[1], 'r:' .. slot, 1)
  taken = 1
end
local expire = math.ceil(slot_len * slots * 1000) + 1000
if not (expire < MAX_EXPIRE_MS) then expire = MAX_EXPIRE_MS end
redis.call('PEXPIRE', KEYS[1], string.format('%d', expire))
if deposits > 0 or taken > 0 then
  NOTE
end
return taken
""".replace("MAX_EXPIRE_MS", str(_MAX_EXPIRE_MS)),
    noted="tostring(taken)",
)

# A retry taken ARGV[3] seconds ago and never sent, given back: one off the r: field of the slot
# it was taken in (on the server's clock: now minus the age), only if that slot is still in the
# window and counts one. A slot that aged out (or holds none: the age landed across a slot's
# edge) is left as it is: the refund is dropped, never taken from another slot.
_REFUND = _once("""
local slot_len, slots, age = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cur = math.floor(now / slot_len)
local s = math.floor((now - age) / slot_len)
if s < cur - slots + 1 then return 0 end
if s > cur then s = cur end
local f = 'r:' .. string.format('%d', s)
local n = tonumber(redis.call('HGET', KEYS[1], f))
if n == nil or n < 1 or n ~= math.floor(n) then return 0 end
if n == 1 then redis.call('HDEL', KEYS[1], f) else redis.call('HINCRBY', KEYS[1], f, -1) end
NOTE
return 1
""")

# TokenBucket.reserve (see policies/pacing.py) on the server's clock. Every writer runs on that
# one clock, so an 'updated' ahead of it is no caller's stale reading (which the pure policy
# moves up to the bucket's time) but the clock stepping back (a failover to a replica whose
# clock is behind, an NTP step): taken as the bucket's time, every reservation waited until the
# clock caught up (up to FleetPacer.MAX_SHARED_WAIT, 15 minutes), a lone reconnect too, and
# wrote 'updated' ahead again. It is taken as now instead: no refill for the step, and no wait
# added for it; a queue of reservations (tokens below 0) still queues the next one behind it, as
# its waits are durations; and 'updated' is written as now.
# Fields that are no state the pure policy can hold (written by something else, or damaged:
# "nan", "inf", "-1e300", a queue deeper than MAX_QUEUE = 2**53 or tokens above the burst) are
# taken as absent, a full bucket, as the budget script drops fields it cannot count: kept, such
# a queue made every wait huge (or NaN), was written back, and re-armed the key's expiry to
# MAX_TTL on every reservation, so it never healed. (Lua's tonumber reads "inf" and "nan".)
_RESERVE = _once(
    """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(h[1]), tonumber(h[2])
local function finite(x) return x ~= nil and x == x and x > -math.huge and x < math.huge end
if not (finite(tokens) and finite(updated) and tokens >= -MAX_QUEUE and tokens <= burst) then
  tokens, updated = nil, nil
end
local avail = burst
if tokens ~= nil and updated ~= nil then
  if updated > now then updated = now end
  avail = math.min(burst, tokens + (now - updated) * rate)
end
tokens = avail - 1
local wait = 0
if tokens < 0 then wait = -tokens / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'updated', string.format('%.6f', now))
local expire = math.ceil((burst / rate + wait) * 1000) + 1000
if not (expire < MAX_EXPIRE_MS) then expire = MAX_EXPIRE_MS end
redis.call('PEXPIRE', KEYS[1], string.format('%d', expire))
local answer = string.format('%.6f', wait)
NOTE
return answer
""".replace("MAX_EXPIRE_MS", str(_MAX_EXPIRE_MS)).replace("MAX_QUEUE", f"{int(MAX_QUEUE)}"),
    result="done",
    noted="answer",
)


#: Seconds an operation record is kept after ``op_timeout``: the time a command sent again
#: takes on the wire, at most (a second is ages on a network a Redis is shared on).
_OP_MARGIN = 1.0


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes of ``key`` to find its slot: the text between its first ``{``
    and the first ``}`` after it, if that is not empty; else all of it."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


#: Redis Cluster's slots: a key's is the CRC16 (XMODEM, ``binascii.crc_hqx`` from 0, as
#: redis-py's ``redis.crc.key_slot`` computes it) of its hash tag's UTF-8, modulo this.
_SLOTS = 16384


#: A surrogate hash tag (see :func:`_slot_tag`) is four characters from ``@`` (0x40) to ``O``
#: (0x4F): each holds a nibble, none is a brace.
_TAG_BASE = b"@@@@"


def _tag_bytes(bits: int) -> bytes:
    """The surrogate tag holding the 16 ``bits``, a nibble per character."""
    return bytes(0x40 | (bits >> shift) & 0xF for shift in (0, 4, 8, 12))


def _tag_pivots() -> dict[int, tuple[int, int]]:
    """What :func:`_slot_tag` solves with: for each bit of a slot, as its highest, a change of a
    tag's slot (from ``@@@@``'s) and the tag bits that make it. CRC16 is linear over GF(2), so
    a tag's slot is ``@@@@``'s XOR a linear map of its bits: eliminated here, once, from the
    16 one-bit tags."""
    base = binascii.crc_hqx(_TAG_BASE, 0)
    pivots: dict[int, tuple[int, int]] = {}
    for i in range(16):
        bits = 1 << i
        change = (binascii.crc_hqx(_tag_bytes(bits), 0) ^ base) % _SLOTS
        while change:
            top = change.bit_length() - 1
            if top not in pivots:
                pivots[top] = (change, bits)
                break
            change ^= pivots[top][0]
            bits ^= pivots[top][1]
    return pivots


#: One per bit of a slot (14): every slot has a surrogate tag (a test checks each).
_TAG_PIVOTS = _tag_pivots()


def _slot_tag(slot: int) -> str:
    """A hash tag whose Redis Cluster slot is ``slot``: four characters, ``@`` to ``O``, the
    same for the same slot. Solved, not searched: a change of slot is a combination of the
    pivots' changes, and its tag the combination of their bits."""
    change = (slot ^ binascii.crc_hqx(_TAG_BASE, 0)) % _SLOTS
    bits = 0
    while change:
        step, tag_bits = _TAG_PIVOTS[change.bit_length() - 1]
        change ^= step
        bits ^= tag_bits
    return _tag_bytes(bits).decode("ascii")


def _ttl_ms(ttl: float) -> int:
    """``PX`` for ``ttl`` seconds, checked and capped as every store does (``MAX_TTL``): a
    caller's bad TTL is a ConfigurationError here, not a refusal from Redis that a
    FallbackStore would take for an outage. At least 1 ms: Redis refuses ``PX 0``."""
    return max(1, round(check_ttl(ttl) * 1000))


class RedisStore:
    """A :class:`~le_transport.state.StateStore` in Redis, shared by every process using it.

    - ``url``: ``redis://host:port/db``, ``rediss://`` for TLS, or ``unix:///path?db=n`` (also
      ``unix:/path``, or ``unix://[[username]:password@]/path``). A password in the URL (in its
      userinfo or as ``?password=``) works but is never logged, nor shown in a repr or an
      error: prefer ``password=``. In the userinfo it must be percent-encoded (``/`` as
      ``%2F``, ``?`` as ``%3F``, ``#`` as ``%23``; ``@`` as ``%40`` is safest): an unencoded
      ``/``, ``?`` or ``#`` ends the host part for every URL parser, which then reads the start
      of the password as a host and a port and the rest as the path. So a URL with an ``@``
      that a parser would read after its host part is refused
      (:class:`~le_transport.errors.ConfigurationError`, the URL not shown): one in the path of
      a ``redis://`` URL, in the fragment, or in a query value other than those of redis-py's
      text parameters (``password=p@ss`` and ``client_name=svc@pod`` are taken as written),
      and, in a ``unix://`` URL with a userinfo (which ends at the first ``@/``: a socket path
      is absolute), a second ``@/`` or a userinfo holding ``/``, ``?`` or ``#``. Any of those
      ``@`` can be written ``%40``. A URL redis-py cannot parse is refused too (its message not
      quoted: it may quote the password). redis-py passes each option in the query to every
      connection, as it does ``client_options``: one a connection does not take, or whose
      value it refuses, is a :class:`ConfigurationError` naming the option (never a value of
      the URL), as for ``client_options`` below.
    - ``password``: passed through to Redis ``AUTH`` (a str or a :class:`Secret`).
    - ``prefix``: every key starts with it (default ``le_transport``).
    - ``op_timeout``: seconds (on ``clock``) before one operation counts as failed: a finite
      number > 0 (else a :class:`ConfigurationError`); one past
      :data:`~le_transport.state.store.MAX_TTL` (over 31,000 years) is taken as ``MAX_TTL``,
      as are the socket timeouts and the operation records' lifetime made from it.
    - ``clock``: a :class:`~le_transport.clock.Clock` (default: the real one).
    - ``client_options``: passed through to ``redis.asyncio.Redis.from_url`` (TLS files such
      as ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``; ``username``; pool sizes). One
      that redis-py's connection does not take, or whose value it refuses, is a
      :class:`ConfigurationError` naming the option, never its value.
    - ``client``: an existing ``redis.asyncio.Redis`` (or ``redis.asyncio.RedisCluster``) to
      use instead (the caller closes it), with or without ``decode_responses``: answers that
      come back as bytes are decoded as UTF-8. redis-py's synchronous ``redis.Redis`` (each
      command would block the event loop, and be taken for an outage) or anything else whose
      registered scripts are not coroutines is a :class:`ConfigurationError` here. A client
      that sends a command again after a lost reply is fine: see the module's docstring.

    A wrong ``clock`` or ``client`` is refused here, not found at the first operation: there it
    failed every one, which a :class:`~le_transport.state.FallbackStore` took for an outage, and
    the fleet silently shared nothing while Redis was up. Likewise a client that refuses, when
    called, the arguments of redis-py's asyncio API, or answers something that cannot be
    awaited, is a :class:`ConfigurationError`; what fails while an answer is awaited is a
    :class:`StateStoreError`, a ``TypeError`` included (redis-py raises one for a connection the
    server reset while it was idle).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        password: str | Secret | None = None,
        prefix: str = DEFAULT_PREFIX,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        clock: Clock | None = None,
        client_options: Mapping[str, Any] | None = None,
        client: Any = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "RedisStore needs redis-py: pip install 'le_transport[redis]'"
            ) from None
        if not isinstance(url, str):
            raise ConfigurationError(f"RedisStore.url must be a str, got {type(url).__name__}")
        if password is not None and not isinstance(password, (str, Secret)):
            # Never shown: only its type. A non-str would also break scrubbing it from errors.
            raise ConfigurationError(
                f"RedisStore.password must be None, a str or a Secret, got "
                f"{type(password).__name__}"
            )
        if (
            not isinstance(prefix, str)
            or not prefix
            or any(c.isspace() or not c.isprintable() for c in prefix)
        ):
            raise ConfigurationError(
                f"RedisStore.prefix must be a non-empty word of printable characters, "
                f"got {prefix!r:.40}"
            )
        # Capped: what is derived from it (the socket timeouts, how long an operation record is
        # kept, in ms) overflowed past a float's range (1e306 s: OverflowError, not a store).
        op_timeout = min(check_seconds("RedisStore", "op_timeout", op_timeout), MAX_TTL)
        # Checked here: a wrong clock failed every operation (in the timeout), an outage.
        require_kind(clock, Clock, owner="RedisStore", field="clock")
        if client_options is not None and not isinstance(client_options, Mapping):
            raise ConfigurationError(
                f"RedisStore.client_options must be a mapping, got {type(client_options).__name__}"
            )
        # The userinfo is split off here, before any parser sees the URL: yarl and urllib read
        # a password holding an unencoded '/' as a host, a port and a path, and showed it.
        bare, userinfo, misread = _split_userinfo(url)
        self._url = _url_shown(bare)
        self._prefix = prefix
        self._op_timeout = float(op_timeout)
        # The operation records (see the module's docstring): this store's mark, a number per
        # operation, and how long a record is kept (ms): a client sends a command again only
        # while the store still waits for it (op_timeout), and a second on top for the wire.
        # The mark is this process's (see _op_mark_now): a child of os.fork() makes its own.
        self._op_mark = secrets.token_hex(8)
        self._op_pid = os.getpid()
        self._op_numbers = itertools.count(1)
        self._op_kept = min(_MAX_EXPIRE_MS, math.ceil((self._op_timeout + _OP_MARGIN) * 1000))
        self._clock = clock or RealClock()
        secret = password.reveal() if isinstance(password, Secret) else password
        option = (client_options or {}).get("password")
        hidden = {
            secret,
            option if isinstance(option, str) else None,
            *_url_secrets(userinfo, bare),
        }
        # Longest first: a secret holding another is hidden whole.
        self._hide = sorted((s for s in hidden if s), key=len, reverse=True)
        self._owns_client = client is None
        if client is None:
            _check_url(url, misread)
            options: dict[str, Any] = {
                "decode_responses": True,
                "socket_connect_timeout": self._op_timeout,
                "socket_timeout": self._op_timeout,
                "retry_on_timeout": False,
                "health_check_interval": 0,
            }
            options.update(client_options or {})
            if secret is not None:
                options["password"] = secret
            try:
                client = aioredis.Redis.from_url(url, **options)
            except ValueError as exc:
                # Not its message: urllib's names the port it could not read, which is the
                # password when the URL holds one without its '@' ("redis://user:pw").
                raise ConfigurationError(
                    f"RedisStore.url {self._url!r} is no URL redis-py can read "
                    f"({type(exc).__name__}; {_URL_FORMS})"
                ) from None
            # Always: the URL's query passes options to each connection too (redis-py hands a
            # name it does not parse on as text), and one a connection refuses failed every
            # operation, an outage for good, Redis up.
            _check_options(client, client_options or {}, _query_names(bare))
        else:
            _check_client(client)
            # What errors and the repr name: the client's own server, not the unused url.
            self._url = _client_shown(client)
        self._client = client
        scripts = [
            client.register_script(s)
            for s in (_GET, _SET_IF, _DELETE_IF, _BUDGET, _RESERVE, _ADD, _REFUND)
        ]
        for script in scripts:
            if not is_async_callable(script):
                raise ConfigurationError(
                    f"RedisStore.client must be a redis.asyncio.Redis (or RedisCluster), got "
                    f"{type(client).__name__}, whose registered scripts "
                    f"({type(script).__name__}) are no coroutines"
                )
        (
            self._get,
            self._set_if,
            self._delete_if,
            self._budget,
            self._reserve,
            self._add,
            self._refund,
        ) = scripts
        self._closed = False

    @property
    def prefix(self) -> str:
        """The key prefix."""
        return self._prefix

    @property
    def op_timeout(self) -> float:
        """Seconds (on :attr:`clock`) before one operation counts as failed (a wrapping
        :class:`~le_transport.state.FallbackStore` bounds each at this and a second)."""
        return self._op_timeout

    @property
    def clock(self) -> Clock:
        """The clock ``op_timeout`` runs on (what a wrapping FallbackStore is given by default
        by :class:`~le_transport.state.SharedDomainMap`)."""
        return self._clock

    def key(self, key: str) -> str:
        """The Redis key for a store key (a str: anything else is a
        :class:`~le_transport.errors.ConfigurationError`, as every store answers it)."""
        check_key(key)
        return f"{self._prefix}:{key}"

    def _budget_key(self, key: str, policy: RetryBudget) -> str:
        """The Redis key of the budget at store key ``key`` on ``policy``'s window: the key,
        then its slot count and slot length (``...:10x3.0s``). Each window has a hash of its
        own (see _BUDGET): budgets of another slot length or slot count at the same key (a
        rolling deploy, two applications on one prefix) neither count nor delete its slots,
        and what a previous release kept at the bare key is never read (it expires as it
        was written). Budgets whose windows are alike share one, whatever their ratio and
        floor: each holds the same counts to its own allowance."""
        return f"{self.key(key)}:{policy.slots}x{policy.slot_length!r}s"

    def _op_mark_now(self) -> str:
        """This process's mark for its operation records, made anew in a child of
        ``os.fork()``: a child went on with its parent's mark and numbers, so parent and child
        named the same records, and one took the other's record of a different operation for
        its own (that operation then never ran: a lost compare-and-set, a token not taken). A
        pid compared per operation (``os.getpid``: no fork hook to miss a fork made elsewhere)."""
        pid = os.getpid()
        if pid != self._op_pid:
            self._op_pid = pid
            self._op_mark = secrets.token_hex(8)
        return self._op_mark

    def _once_keys(self, redis_key: str) -> list[str]:
        """The keys of a script that runs once per operation: ``redis_key`` and a new record of
        the operation, in the same Redis Cluster slot (a script's keys must share one), under
        the prefix (a Redis ACL that allows the prefix's keys allows it). The record's hash tag
        is ``redis_key``'s; where its name cannot carry that tag (a tag holding a ``}``: a key
        ``a}b``, or any key under a prefix ``a}``), a surrogate whose slot is the key's
        (:func:`_slot_tag`): such a key got no record, and a command sent again ran twice.
        Only ``redis_key`` if no record can be named (a prefix holding a ``{`` that keeps the
        record's name from either tag, ``a{`` or ``{}``): the script then runs as often as it
        is sent."""
        mark, number = self._op_mark_now(), next(self._op_numbers)
        tag = _hash_tag(redis_key)
        record = f"{self._prefix}:op:{{{tag}}}:{mark}:{number}"
        if _hash_tag(record) == tag:
            return [redis_key, record]
        if "{" in self._prefix:
            return [redis_key]
        # The prefix holds no '{': the record's hash tag is the surrogate, whole. (redis-py is
        # imported where a store is used, not with this module.)
        from redis.crc import key_slot

        surrogate = _slot_tag(key_slot(redis_key.encode()))
        return [redis_key, f"{self._prefix}:op:{{{surrogate}}}:{mark}:{number}"]

    def _scrub(self, text: str) -> str:
        for secret in self._hide:
            if len(secret) >= _MIN_BARE_SECRET:
                text = text.replace(secret, REDACTED)
            else:
                # Replaced everywhere, a short password blanked unrelated text ("a": every "a"
                # of the message): it is hidden only where it stands as a credential.
                text = _hide_credential(text, secret)
        return redact_cut(text, 300)

    def _start(self, op: str, coro_fn: Any, args: Any, kwargs: Any) -> Any:
        """``coro_fn(*args, **kwargs)``, the awaitable of one command. A TypeError from the call
        itself (the arguments of redis-py's asyncio API refused) or an answer that cannot be
        awaited is a client that is not one: a :class:`ConfigurationError`, never an outage."""
        try:
            pending = coro_fn(*args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(
                f"RedisStore.client: its {op} refused the arguments of redis-py's asyncio API "
                f"(TypeError, the __cause__): is {type(self._client).__name__} a "
                "redis.asyncio.Redis?"
            ) from exc
        except Exception as exc:
            raise self._failed(op, exc) from None
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"RedisStore.client: its {op} answered a {type(pending).__name__}, not an "
                f"awaitable: is {type(self._client).__name__} a redis.asyncio.Redis?"
            )
        return pending

    def _failed(
        self, op: str, exc: BaseException, key: str | None = None, redis_key: str | None = None
    ) -> StateStoreError:
        # redis-py raises its own errors, OSError and, on a cut connection, others (a TypeError
        # or AttributeError from asyncio's transport: redis-py#4287): every one of them is the
        # store failing, never the caller's fault. But an error Redis answered about the data
        # of the one key the command named is that key's damage (StateDataError): the server
        # is up. The message names the key as Redis holds it (``redis_key``: the prefix, and a
        # budget's window), which is what an operator inspects or deletes; ``.key`` is the
        # store's key, which the fallback tracks.
        if isinstance(exc, UnicodeDecodeError):
            # A value Redis answered that is no UTF-8, on a client with decode_responses (the
            # store's own; a caller's): that key's data, not the server failing. Taken for an
            # outage, one such value sent every key local. Its text quotes a byte of the value:
            # not shown. (Not decoded with errors="replace": see stored_text.)
            text = (
                f"redis {op} on {self._url} failed: {type(exc).__name__}: the value is no "
                "UTF-8 (not shown)"
            )
        else:
            text = (
                f"redis {op} on {self._url} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
            )
        if key is not None and (isinstance(exc, UnicodeDecodeError) or _is_data_error(exc)):
            shown = self.key(key) if redis_key is None else redis_key
            return StateDataError(f"{text} (the data at Redis key {shown!r})", key=key)
        return StateStoreError(text)

    async def _run(
        self,
        op: str,
        coro_fn: Any,
        *args: Any,
        on_key: str | None = None,
        redis_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if self._closed:
            raise StateStoreError(f"redis {op}: the store is closed")
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        pending = self._start(op, coro_fn, args, kwargs)
        try:
            async with timeout_after(self._clock, self._op_timeout):
                result = await pending
            if task is not None and task.cancelling() > cancelling:
                # redis-py can finish a command it was cancelled in (to keep its connection
                # in step) and return normally: the caller's cancellation (an engine closing,
                # a deadline) must not be lost with it, or a keepalive never stops.
                raise asyncio.CancelledError
            return result
        except TimeoutError:
            raise StateStoreError(
                f"redis {op} on {self._url} took longer than {self._op_timeout:g} s"
            ) from None
        except Exception as exc:
            raise self._failed(op, exc, on_key, redis_key) from None

    async def get(self, key: str) -> Entry | None:
        """The value at ``key`` and its remaining TTL (0 for a key without an expiry; a key in
        its last millisecond has a little more), or None."""
        found = await self._run("get", self._get, keys=[self.key(key)], on_key=key)
        if not found:
            return None
        value, pttl = found
        ms = int(pttl)
        # PTTL -1 (no expiry: a key set by something else) reads as 0, as Entry says; -2 (no
        # key) cannot follow a GET in the same script, and would read as 0 too. PTTL 0 is a
        # key in its last millisecond: read as 0, it was taken for one without an expiry (a
        # shared domain map was then served for a whole TTL more). It reads as half a
        # millisecond, as a MemoryStore tells a live key's life: always > 0.
        life = 0.0005 if ms == 0 else max(0.0, ms / 1000.0)
        # A client without decode_responses answers bytes: str() of them was "b'...'", which
        # no reader took for the value (the fleet's breaker trips, its session: all damaged).
        return Entry(_text(value), life)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        """``SET key value PX ttl``, or with ``only_if`` a compare-and-set (a script); ``value``,
        ``ttl`` and ``only_if`` checked first, as :class:`~le_transport.state.MemoryStore`
        checks them. Whether it stored."""
        px = _ttl_ms(ttl)
        check_value(value)
        if only_if is None:
            await self._run("set", self._client.set, self.key(key), value, px=px)
            return True
        check_only_if(only_if)
        done = await self._run(
            "set",
            self._set_if,
            keys=self._once_keys(self.key(key)),
            args=[only_if, value, px, self._op_kept],
            on_key=key,
        )
        return bool(done)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """``SET key value NX PX ttl`` (a script); ``value`` and ``ttl`` checked first.

        Idempotent: a key already holding exactly ``value`` answers True, its TTL unchanged. A
        client that retries a command whose reply it lost (redis-py's ``Retry``, on by default
        for a client made by the caller) sends it again after the server ran it; a plain
        ``SET NX`` then found the value it had just written and answered False, and the caller
        took its own lock for another holder's. So a lock's value must be unique per holder and
        attempt (the library's are)."""
        px = _ttl_ms(ttl)
        check_value(value)
        ok = await self._run("add", self._add, keys=[self.key(key)], args=[value, px], on_key=key)
        return bool(ok)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        """``DEL``, or compare-and-delete when ``only_if`` is given."""
        check_only_if(only_if)
        if only_if is None:
            return bool(await self._run("delete", self._client.delete, self.key(key)))
        done = await self._run(
            "delete",
            self._delete_if,
            keys=self._once_keys(self.key(key)),
            args=[only_if, self._op_kept],
            on_key=key,
        )
        return bool(done)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        """The retry budget's deposit and withdrawal, atomically, in one script, on the hash of
        ``policy``'s window at ``key`` (``{prefix}:{key}:10x3.0s``: its slot count and slot
        length; one hash per window)."""
        check_budget(policy)
        deposits = check_deposits(deposits)  # a caller's error, never taken for an outage
        window_key = self._budget_key(key, policy)
        taken = await self._run(
            "budget",
            self._budget,
            keys=self._once_keys(window_key),
            args=[
                repr(policy.ratio),
                repr(policy.floor),
                repr(policy.slot_length),
                policy.slots,
                int(deposits),
                1 if withdraw else 0,
                self._op_kept,
            ],
            on_key=key,
            redis_key=window_key,
        )
        return bool(int(taken))

    async def refund(self, key: str, policy: RetryBudget, *, age: float) -> bool:
        """Give back one retry :meth:`budget` took ``age`` seconds ago that was never sent (its
        caller cancelled in the pause): one off the slot it was counted in, on the server's
        clock. Whether it was given back: a slot that left the window, or counts no retry, is
        left as it is (the budget never goes below zero, nor gives back more than it took)."""
        check_budget(policy)
        age = check_seconds("RedisStore.refund", "age", age, zero=True)
        window_key = self._budget_key(key, policy)
        done = await self._run(
            "refund",
            self._refund,
            keys=self._once_keys(window_key),
            args=[repr(policy.slot_length), policy.slots, repr(age), self._op_kept],
            on_key=key,
            redis_key=window_key,
        )
        return bool(int(done))

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        """One token from the shared bucket: seconds to wait."""
        check_bucket(bucket)
        wait = await self._run(
            "reserve",
            self._reserve,
            keys=self._once_keys(self.key(key)),
            args=[repr(bucket.rate), repr(bucket.burst), self._op_kept],
            on_key=key,
        )
        return max(0.0, float(_text(wait)))

    async def ping(self) -> None:
        """Raise :class:`StateStoreError` unless Redis answers."""
        await self._run("ping", self._client.ping)

    async def close(self) -> None:
        """Close the connection pool (if the store made the client). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            # aclose() since redis-py 5.0.1; 5.0.0, the floor the extra allows, has close() only
            # (the AttributeError was taken for a failed close, and the pool left open).
            closer = getattr(self._client, "aclose", None) or self._client.close
            try:
                await closer()
            except Exception as exc:  # a dead server must not fail a shutdown
                _log.debug("closing the Redis client failed: %s", type(exc).__name__)

    def __repr__(self) -> str:
        return f"RedisStore(url={self._url!r}, prefix={self._prefix!r})"


#: The codes of Redis' error replies that tell of the server (a replica, memory, ACLs, a cluster
#: moving, loading, a script running): an outage for every key, never one key's damage.
_SERVER_CODES = re.compile(
    r"(?:^|[\s\-])(?:READONLY|OOM|NOPERM|NOSCRIPT|MISCONF|BUSY|NOAUTH|WRONGPASS|LOADING|"
    r"MASTERDOWN|CLUSTERDOWN|MOVED|ASK|TRYAGAIN|EXECABORT|NOREPLICAS|UNBLOCKED|CROSSSLOT)\b"
)
#: How redis-py words the errors Redis answers about one key's data (its parser drops "ERR ").
_DATA_ERRORS = (
    "WRONGTYPE",
    "hash value is not",
    "value is not an integer",
    "value is not a valid float",
    "increment or decrement would overflow",
    "increment would produce NaN or Infinity",
)


def _is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis answering that the data of the key a command named cannot be
    worked on (a key of another type, a field a script cannot count: a script's runtime error),
    rather than the server failing: a plain ``ResponseError`` (its subclasses are the
    server's: read-only, out of memory, no permission ...) naming no server condition."""
    from redis.exceptions import ResponseError

    if type(exc) is not ResponseError:
        return False
    text = str(exc)
    if _SERVER_CODES.search(text):
        return False
    return text.startswith(_DATA_ERRORS) or "WRONGTYPE" in text or "user_script" in text


#: A secret at least this long is hidden wherever an error's text holds it (a coincidence is
#: then implausible); a shorter one only where it stands as a credential: see
#: :func:`_hide_credential`.
_MIN_BARE_SECRET = 8
#: What may end a credential's value in free text.
_VALUE_END = r"""(?=$|[\s"'&,;)\]}])"""


def _hide_credential(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced where it stands as a credential, and nowhere else: as
    a URL's userinfo (``://user:secret@``, ``://secret@``), or as the whole value of a field
    whose name is a credential's (``password=secret``, ``"password": "secret"``)."""
    s = re.escape(secret)
    text = re.sub(rf"(?<=[:/]){s}(?=@)", REDACTED, text)

    def field(match: re.Match[str]) -> str:
        if not is_secret_name(match.group(1)):
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{REDACTED}"

    return re.sub(rf"(?<![\w.-])([\w.-]+)([\"']?\s*[:=]\s*[\"']?){s}{_VALUE_END}", field, text)


def _check_options(
    client: Any, client_options: Mapping[str, Any], query: frozenset[str] = frozenset()
) -> None:
    """Refuse ``client_options``, or options in the URL's query (``query``: their names), that
    a connection would not take: redis-py hands both to each connection it opens, so a
    misspelt one failed the first operation with a TypeError, taken for an outage (the fleet
    went local for good, Redis up). A connection is made here, not opened, to ask; named by
    the options' names, never their values.

    A value it refuses (``protocol="x"``, an unknown ``ssl_cert_reqs``: redis-py raises its
    ConnectionError, RedisError or a ValueError) is refused the same way: it escaped here
    raw, its text quoting the value (a misplaced password, perhaps)."""
    pool = getattr(client, "connection_pool", None)
    make = getattr(pool, "connection_class", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if make is None or not isinstance(kwargs, Mapping):
        return
    kind = getattr(make, "__name__", type(make).__name__)
    # The URL's query wins over client_options in redis-py (from_url): named as the URL's.
    given = [*sorted(query), *(str(k) for k in client_options if str(k) not in query)]
    try:
        with warnings.catch_warnings():
            # A probe: what a connection warns of (a deprecated option), it warns of when the
            # pool makes one, not twice.
            warnings.simplefilter("ignore")
            make(**kwargs)
    except TypeError as exc:
        # The option's name, when the error names one of those given (a name, not a value).
        named = [k for k in given if f"'{k}'" in str(exc)]
        raise ConfigurationError(
            f"{_where(named, query)}: redis-py's {kind} does not take "
            f"{_which(named, given)} (a misspelt option, or one of another kind of "
            "connection: TLS options need rediss://)"
        ) from None
    except Exception as exc:
        # Named as above, by a name its text holds as a word (never the text itself).
        text = str(exc)
        named = [k for k in given if re.search(rf"\b{re.escape(k)}\b", text)]
        raise ConfigurationError(
            f"{_where(named, query)}: redis-py's {kind} refused the value of "
            f"{_which(named, given)} ({type(exc).__name__}; the value is not shown)"
        ) from None


#: An option's name as an error may show it: a word (anything else in a URL's query is not
#: shown: a URL may be written wrongly, with its password where a name should be).
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _query_names(bare: str) -> frozenset[str]:
    """The names of the options in a URL's query (its userinfo split off), as redis-py reads
    them (``parse_qs``: those with an empty value are dropped)."""
    query = bare.partition("?")[2].partition("#")[0]
    return frozenset(parse_qs(query))


def _where(named: list[str], query: frozenset[str]) -> str:
    """Where the option an error is about was given: the URL's query or client_options."""
    if named:
        return "RedisStore.url's query" if named[0] in query else "RedisStore.client_options"
    return "RedisStore.url's query or client_options" if query else "RedisStore.client_options"


def _which(named: list[str], given: list[str]) -> str:
    """The option an error is about, if it named one, else every option given (by name, only
    those that are words)."""
    if named:
        return _shown_name(named[0])
    names = sorted({_shown_name(n) for n in given})
    if not names:
        return "the options made from the URL (none given)"
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def _shown_name(name: str) -> str:
    """An option's name, quoted, if it is a word; else a mention that one is not shown."""
    return repr(name) if _OPTION_NAME.fullmatch(name) else "an option whose name is not shown"


def _client_shown(client: Any) -> str:
    """A caller's client as errors name it: the server its pool connects to (``rediss://`` if
    its connections are TLS ones, an IPv6 host in brackets; host, port and db, never a
    password), or its type when it tells none (a cluster, a wrapper)."""
    from redis.asyncio.connection import SSLConnection

    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping):
        host, port, db = kwargs.get("host"), kwargs.get("port"), kwargs.get("db", 0)
        if isinstance(host, str) and isinstance(port, int) and isinstance(db, int):
            kind = getattr(pool, "connection_class", None)
            tls = isinstance(kind, type) and issubclass(kind, SSLConnection)
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"  # an IPv6 address: its ':' would be read as the port's
            return redact_url(f"{'rediss' if tls else 'redis'}://{host}:{port}/{db}")
        path = kwargs.get("path")
        if isinstance(path, str):
            return f"unix://{path}"
    return f"a {type(client).__name__} given as client"


#: What a Redis URL looks like, for a refusal.
_URL_FORMS = (
    "redis://host[:port][/db], rediss://... for TLS, or unix:///path[?db=n] (unix:/path); "
    "a user name and password go before the host or the path as [username]:password "
    "followed by an '@', with a password percent-encoded"
)
#: The schemes redis-py reads.
_SCHEMES = frozenset({"redis", "rediss", "unix"})
#: Query parameters that redis-py passes to its connections as text, whose values may hold an
#: ``@`` as written (``?password=p@ss``, ``?client_name=svc@pod-7``). An ``@`` in any other
#: query parameter is taken for the end of a userinfo whose password holds a ``?``: redis-py
#: would pass that parameter to its connection, which refuses a name it does not know.
_TEXT_PARAMS = frozenset(
    {
        "password",
        "username",
        "client_name",
        "lib_name",
        "lib_version",
        "ssl_password",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "path",
        "host",
    }
)


def _text(value: object) -> str:
    """A value Redis answered, as a str: a client without ``decode_responses`` answers bytes,
    decoded as UTF-8 (what every client writes a str as by default). A byte that is no UTF-8
    becomes U+FFFD: the value then reads as damaged (a trip or a session is ignored and
    replaced), where a strict decode failed the operation, an outage for every key."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _first(text: str, chars: str) -> int:
    """The index of the first of ``chars`` in ``text``, or its length."""
    found = [i for i in (text.find(c) for c in chars) if i >= 0]
    return min(found) if found else len(text)


def _split_userinfo(url: str) -> tuple[str, str | None, bool]:
    """``url`` without its userinfo, the userinfo (None if it has none), and whether a parser
    would misread it (an ``@`` where it may end a userinfo that a parser would not end there).

    Found here rather than by a URL parser: a password holding an unencoded ``/``, ``?`` or
    ``#`` ends the authority for every parser, which then read ``user:4711`` as a host and a
    port and the rest of the password as the path or the query (and showed it).

    - ``redis://`` and ``rediss://``: the authority ends at the first ``/``, ``?`` or ``#``, and
      its userinfo at its last ``@``, as every parser reads it. An ``@`` after the authority
      is misread unless it is in the value of one of redis-py's text parameters in the query
      (:data:`_TEXT_PARAMS`): the path is the db number, and a fragment nothing redis-py reads.
    - ``unix://``: a socket path is absolute, so a userinfo ends at the first ``@/``; it is
      misread if it holds a ``/``, ``?`` or ``#`` (a parser ends it there), or if the path holds
      a second ``@/`` (a password holding ``@/`` could end at either). With no ``@/``, an
      authority ends as for ``redis://``. An empty authority (``unix:///path``, and
      ``unix:/path``, which has none) has no userinfo: an ``@`` in it is the path's or the
      query's.

    A misread URL is refused (:func:`_check_url`), unless ``client=`` is given (it goes
    unused): all before its last ``@`` is then taken for its userinfo, to be hidden.
    """
    scheme, colon, rest = url.partition(":")
    if not colon or not rest.startswith("//"):
        return url, None, False  # no authority (unix:/path), or refused by _check_url
    rest = rest[2:]
    start = f"{scheme}://"
    if scheme.lower() == "unix" and rest.startswith("/"):
        return url, None, False  # an empty authority: '@' is the path's or the query's
    at = rest.find("@/") if scheme.lower() == "unix" else -1
    if at >= 0:
        misread = _first(rest[:at], "/?#") < at or _misread_after(
            rest[at + 1 :], path_holds_at=True
        )
    else:
        end = _first(rest, "/?#")
        at = rest.rfind("@", 0, end)
        misread = _misread_after(rest[end:], path_holds_at=False)
    if misread:
        at = rest.rfind("@")
    if at < 0:
        return url, None, misread
    return start + rest[at + 1 :], rest[:at], misread


def _misread_after(after: str, *, path_holds_at: bool) -> bool:
    """Whether the part of a URL after its authority (its path, query and fragment) holds an
    ``@`` that may end a userinfo: in the path (unless ``path_holds_at``: then a second
    ``@/``), in the fragment, or in the query other than in a value of :data:`_TEXT_PARAMS`."""
    q = _first(after, "?#")
    path, tail = after[:q], after[q:]
    if ("@/" if path_holds_at else "@") in path:
        return True
    query, _, fragment = tail[1:].partition("#") if tail.startswith("?") else ("", "", tail[1:])
    if "@" in fragment:
        return True
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if "@" in name or ("@" in value and unquote_plus(name) not in _TEXT_PARAMS):
            return True
    return False


def _url_shown(bare: str) -> str:
    """A URL without its userinfo as the repr and errors show it (:func:`redact_url`), a unix
    socket's with its scheme (yarl takes an empty authority for none, and drops it)."""
    shown = redact_url(bare)
    scheme, colon, rest = bare.partition(":")
    if colon and scheme.lower() == "unix" and not shown.lower().startswith("unix:"):
        if shown.startswith("/") and rest.startswith("//"):
            return f"{scheme}://{shown}"
        if shown != "<unparseable url>":
            return f"{scheme}:{shown}"
    return shown


def _url_secrets(userinfo: str | None, bare: str) -> list[str]:
    """What a URL holds that error messages must never show: its userinfo's password as
    written and decoded (a userinfo without ':' too, in case it is a password without its
    ':'), and the values of credential-named query parameters (redis-py takes
    ``?password=``)."""
    found: list[str] = []
    if userinfo is not None:
        _, colon, password = userinfo.partition(":")
        raw = password if colon else userinfo
        found += [raw, unquote(raw)]
    query = bare.partition("?")[2].partition("#")[0]
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if value and is_secret_name(unquote_plus(name)):
            # redis-py reads a query value as parse_qs does: '+' a space, then percent-decoded.
            found += [value, unquote(value), unquote_plus(value)]
    return found


def _check_url(url: str, misread: bool) -> None:
    """A :class:`ConfigurationError` for a URL redis-py cannot use as written, before it parses
    it. Only the scheme is ever shown: the rest may hold a password."""
    scheme, colon, rest = url.partition(":")
    kind = scheme.lower()
    # unix:/path is a socket path without an authority (so without a userinfo), as redis-py
    # reads it; redis:// and rediss:// name their host in one.
    if not colon or kind not in _SCHEMES or (kind != "unix" and not rest.startswith("//")):
        shown = (
            f"{scheme!r}"
            if colon and scheme.isascii() and scheme.isalnum() and len(scheme) <= 16
            else "something else"
        )
        if kind in _SCHEMES:
            shown = f"{kind}: without '//'"
        raise ConfigurationError(
            f"RedisStore.url must start with redis://, rediss:// or unix:, got {shown} (the "
            "URL is not shown: it may hold a password)"
        )
    if misread:
        raise ConfigurationError(
            "RedisStore.url has an '@' that a URL parser may read after its host: a password "
            "holding '/', '?', '#' or '@' must be percent-encoded in a URL (%2F, %3F, %23, "
            "%40), or given as the password argument; an '@' in a redis:// path, a fragment or a "
            "query value (but those of password=, username=, client_name= and redis-py's other "
            f"text parameters), or a second '@/' in a unix:// URL, written %40 ({_URL_FORMS}). The "
            "URL is not shown: it may hold a password"
        )


def _check_client(client: object) -> None:
    """A :class:`ConfigurationError` unless ``client`` can be one of redis-py's asyncio
    clients: not its synchronous one, with the commands the store sends (its scripts are
    checked once registered)."""
    import redis
    import redis.asyncio as aioredis

    if isinstance(client, (aioredis.Redis, aioredis.RedisCluster)):
        return
    if isinstance(client, (redis.Redis, redis.RedisCluster)):
        raise ConfigurationError(
            f"RedisStore.client must be a redis.asyncio.Redis (or RedisCluster), got "
            f"{type(client).__module__}.{type(client).__name__}, redis-py's synchronous client: "
            "each command would block the event loop, and its answers cannot be awaited"
        )
    missing = [
        name
        for name in ("register_script", "set", "delete", "ping")
        if not callable(getattr(client, name, None))
    ]
    if missing:
        raise ConfigurationError(
            f"RedisStore.client must be a redis.asyncio.Redis (or RedisCluster), got "
            f"{type(client).__name__}, without {', '.join(missing)}"
        )
