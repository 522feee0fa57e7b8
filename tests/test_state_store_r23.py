"""RedisStore's operation records: one mark per process (a forked child makes its own), a record
for every key (one whose hash tag the record's name cannot carry too), and an op_timeout past
MAX_TTL. Redis tests use a real redis-server (tests/redis_server.py) on the real clock."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import redis.asyncio as aioredis

from le_transport.state import RedisStore, state_key

from .redis_server import RedisServer, close_client, redis_server

__all__ = ["redis_server"]


def _mark(record: str) -> str:
    """The store's mark in an operation record's name (``{prefix}:op:{tag}:<mark>:<n>``)."""
    return record.rsplit(":", 2)[1]


# -- 1. A forked child makes its own mark --------------------------------------------------


def test_a_store_s_mark_is_made_anew_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child of os.fork() (simulated: os.getpid answers another pid) names its records with
    a mark of its own, kept for the rest of its life; the parent's stays as it was."""
    store = RedisStore("redis://127.0.0.1:1/0", prefix="t")
    redis_key = store.key(state_key("1", "breaker", "svc", "host"))
    parent = _mark(store._once_keys(redis_key)[1])
    assert _mark(store._once_keys(redis_key)[1]) == parent  # one mark per process
    real = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real + 1)
    child = _mark(store._once_keys(redis_key)[1])
    assert child != parent
    assert _mark(store._once_keys(redis_key)[1]) == child


def test_a_forked_child_does_not_take_its_parent_s_record_for_its_own(
    redis_server: RedisServer,
) -> None:
    """A store made before os.fork() (a pre-fork server's worker) went on, in the child, with
    the parent's mark and numbers: the child's first operation on a key was named as the
    parent's first, and found its record. A compare-and-set then answered True (the parent's
    answer) and stored nothing: a lost update. Each process now has a mark of its own."""
    store = RedisStore(redis_server.url, prefix="t", op_timeout=5.0)
    key = state_key("1", "breaker", "svc", "host")
    redis_key = store.key(key)

    async def seed() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await client.set(redis_key, "a", px=60_000)
        finally:
            await close_client(client)

    async def swap(old: str, new: str) -> bool:
        try:
            return await store.set(key, new, ttl=60, only_if=old)
        finally:
            await store.close()

    asyncio.run(seed())
    parent_ran, parent_told = os.pipe()
    child_told, child_tells = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: reports on the pipe, never returns
        code = 1
        try:
            os.close(parent_told)
            os.close(child_told)
            os.read(parent_ran, 1)  # the parent's operation first
            done = asyncio.run(swap("p", "c"))
            mark = _mark(store._once_keys(redis_key)[1])
            os.write(child_tells, json.dumps([done, mark]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(parent_ran)
    os.close(child_tells)
    try:
        assert asyncio.run(swap("a", "p")) is True
        mark = _mark(store._once_keys(redis_key)[1])
    finally:
        os.write(parent_told, b"1")
        os.close(parent_told)
        told = b""
        while chunk := os.read(child_told, 4096):
            told += chunk
        os.close(child_told)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    done, child_mark = json.loads(told)

    async def stored() -> str | None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            value = await client.get(redis_key)
            return None if value is None else str(value)
        finally:
            await close_client(client)

    assert done is True
    assert asyncio.run(stored()) == "c", "the child's compare-and-set answered True, stored none"
    assert child_mark != mark
