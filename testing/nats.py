"""A real nats-server for the bus tests and `benchmarks.api`: a child process on a free port, with JetStream.

The server picks its own port (`-p -1`) and is ready when its log says so (the port is read from the same log), so
nothing races for a port and nothing sleeps; `stop()` and `start()` keep the port and the store directory, as a
production restart would. Each server has its own store, so stopping it never disturbs another NATS.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from adapters.nats_embedded import nats_server_binary

__all__ = ["NatsServer", "nats_server_binary"]


class NatsServer:
    """A nats-server child process with JetStream; `stop()` and `start()` keep its port and store."""

    _READY = re.compile(r"Listening for client connections on [\d.]+:(\d+)")

    def __init__(self, store_dir: Path, binary: str, *, jetstream: bool = True) -> None:
        self.store_dir = store_dir
        self.jetstream = jetstream
        self.binary = binary
        self.port = -1  # -1: let the server pick a free port the first time
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store_dir)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.proc = proc
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            # Drains the log until the process exits (a full pipe would block the server).
            with proc.stderr:  # type: ignore[union-attr]
                for line in proc.stderr:  # type: ignore[union-attr]
                    if len(lines) < 200:
                        lines.append(line)
                    m = self._READY.search(line)
                    if m:
                        self.port = int(m.group(1))
                    if "Server is ready" in line:
                        ready.set()
            ready.set()  # EOF: the process died; start() reports it below

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or proc.poll() is not None or self.port <= 0:
            self.stop()
            raise RuntimeError("nats-server did not start:\n" + "".join(lines[-20:]))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
