"""A real nats-server for the bus tests and `benchmarks.api`: a child process on a free port, with JetStream.

The server picks its own port (`-p -1`) and is ready when its log says so (the port is read from the same log), so
nothing races for a port and nothing sleeps; `stop()` and `start()` keep the port and the store directory, as a
production restart would. Each server has its own store, so stopping it never disturbs another NATS.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from adapters.nats_embedded import nats_server_binary
from testing.net import start_child, stop_child

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

        def ready(line: str) -> bool:
            m = self._READY.search(line)
            if m:
                self.port = int(m.group(1))
            return "Server is ready" in line

        self.proc = start_child(cmd, ready, [], what="nats-server", timeout=timeout, max_log=200)
        if self.port <= 0:
            self.stop()
            raise RuntimeError("nats-server did not say its port")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_child(proc)
