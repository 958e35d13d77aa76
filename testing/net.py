"""Loopback networking for tests and benchmarks: free ports, servers in child processes (ready when their log says
so), HTTP servers in a thread, and an ASGI app served by uvicorn on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import uvicorn


def free_port() -> int:
    """A 127.0.0.1 TCP port that was free a moment ago: for a server in another process, which binds it itself
    (or for a URL nothing listens on). In-process servers bind port 0 instead (`serve`), which cannot race."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_child(cmd: list[str], ready: Callable[[str], bool], log: list[str], *, what: str,
                timeout: float = 15.0, max_log: int = 500, env: dict[str, str] | None = None,
                cwd: str | None = None) -> subprocess.Popen[str]:
    """Starts `cmd` and returns once a line of its output (stdout and stderr) satisfies `ready`; its output is drained
    into `log` (the first `max_log` lines) for as long as it runs, so a full pipe never blocks it. Raises
    RuntimeError with the log's tail when it exits or does not get ready within `timeout`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    became_ready = threading.Event()

    def read() -> None:
        with proc.stdout:  # type: ignore[union-attr]
            for line in proc.stdout:  # type: ignore[union-attr]
                if len(log) < max_log:
                    log.append(line)
                if ready(line):
                    became_ready.set()
        became_ready.set()  # EOF: the process died; reported below

    threading.Thread(target=read, daemon=True).start()
    if not became_ready.wait(timeout) or proc.poll() is not None:
        stop_child(proc)
        raise RuntimeError(f"{what} did not start:\n" + "".join(log[-20:]))
    return proc


def stop_child(proc: subprocess.Popen[str] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class ThreadedHttpServer:
    """A loopback `http.server` in a daemon thread, for the scripted servers of other protocols (bound at
    construction, so `base_url` is known before `start()`); `with server:` starts and stops it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str, port: int, name: str) -> None:
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class Served:
    url: str  # http://127.0.0.1:<port>
    server: uvicorn.Server
    task: asyncio.Future[None]

    async def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: uvicorn stops serving, then the lifespan (if on) shuts down."""
        self.server.should_exit = True
        await self.task


@contextlib.asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[Served]:
    """Run `app` under uvicorn on a socket bound to 127.0.0.1:0 in this event loop; yields once it listens
    (after the lifespan started, when `lifespan="on"`) and stops it on exit. `config`: `uvicorn.Config` options;
    uvicorn's logging setup and access log are off unless given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **{"log_config": None, "access_log": False, **config}))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:  # uvicorn flips this flag once the socket listens; it has no event to await
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.02)
        yield Served(f"http://127.0.0.1:{port}", server, task)
    finally:
        server.should_exit = True
        await task
        sock.close()
