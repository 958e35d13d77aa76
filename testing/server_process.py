"""`python server.py` as a child process: for the kill drills and `benchmarks.soak`.

Unlike `testing.live_server` (the app in the test's own process), this is the real program: its own interpreter,
its STT worker processes and embedded store, readiness read from `/readyz`. `kill()` is `kill -9`; `start()` again
on the same `data_dir` is a restart (same port, same secrets, same store), as a supervisor would do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from testing.net import free_port

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """server.py on a free loopback port with `data_dir` as DATA_DIR; output appended to `data_dir/server.log`.

    `env` adds settings (environment variables); `nice` runs it (and every child) at that niceness."""

    def __init__(self, data_dir: Path, *, admin_key: str, env: dict[str, str] | None = None, nice: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.admin_key = admin_key
        self.extra_env = dict(env or {})
        self.nice = nice
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not running")
        return self.proc.pid

    def launch(self) -> None:
        """Start the process (returns at once; `wait_ready` waits for /readyz)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "DATA_DIR": str(self.data_dir),
               "ADMIN_API_KEY": self.admin_key, "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
               **self.extra_env}  # fmt: skip
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*prefix, sys.executable, str(ROOT / "server.py")], cwd=ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    async def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until `/readyz` answers 200; RuntimeError (with the log's tail) if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"server exited ({self.proc and self.proc.returncode}):\n{self.tail_log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready within {timeout_s} s:\n{self.tail_log()}")
                await asyncio.sleep(0.2)  # polling another process's readiness endpoint

    async def start(self, timeout_s: float = 180.0) -> None:
        self.launch()
        await self.wait_ready(timeout_s)

    def kill(self) -> None:
        """`kill -9`: no shutdown, no drain; its children are left to notice on their own."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful: streams drained, finals persisted) and wait; SIGKILL after `timeout_s`. Exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def tail_log(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/<pid>/task/*/children); gone processes are skipped."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return found
