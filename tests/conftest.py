"""Shared fixtures: MongoDB (real when MONGODB_URL is set, else an nx-27017 started for the session), NATS, data.

* `mongo_url` (session): `MONGODB_URL`, or an embedded nx-27017 on a free port with its data in a tmp dir.
* `store` (function): a `MongoStore` on a fresh database, dropped afterwards.
* `service` (function): an `InterviewService` over `store`.
* `nats_url` (session): `NATS_URL` or nats://127.0.0.1:4222; fails (never skips) when nothing listens there.
* `shared_data` (session): the test audio directory `../shared/data`; fails when missing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from adapters.mongo import EmbeddedMongo, MongoStore
from domain.commands import InterviewService
from testing.data import SHARED_DATA


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("MONGODB_URL")
    if url:
        yield url
        return
    embedded = EmbeddedMongo(tmp_path_factory.mktemp("mongo"))
    # The server is a subprocess, not bound to any event loop, so each call may use its own short-lived loop.
    url = asyncio.run(embedded.start())
    try:
        yield url
    finally:
        asyncio.run(embedded.stop())


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[MongoStore]:
    s = await MongoStore.connect(mongo_url, db_name=f"test_{uuid.uuid4().hex[:16]}")
    try:
        yield s
    finally:
        await s.drop_database()
        await s.close()


@pytest.fixture
def service(store: MongoStore) -> InterviewService:
    return InterviewService(store)


@pytest.fixture(scope="session")
def nats_url() -> str:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"NATS is not reachable at {url} ({exc}); start nats-server -js or set NATS_URL")
    return url


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data directory {SHARED_DATA} is missing (see README: ../shared/data)")
    return SHARED_DATA
