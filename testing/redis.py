"""A real redis-server for the shared-state tests: a child process on a free loopback port, no persistence.

Ready when its log says so; `stop()` and `start()` keep the port (an outage and its end, as the nodes see it).
The binary is the Debian package `redis-server` (`.ci/run` installs it).
"""

from __future__ import annotations

import shutil
import subprocess

from testing.net import free_port, start_child, stop_child


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """redis-server on 127.0.0.1 with neither RDB snapshots nor an append-only file."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--protected-mode", "yes"]
        self.proc = start_child(cmd, lambda line: "Ready to accept connections" in line, [], what="redis-server",
                                timeout=timeout, max_log=200)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_child(proc)
