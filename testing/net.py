"""Loopback networking for tests and benchmarks: free ports, and an ASGI app served by uvicorn on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn


def free_port() -> int:
    """A 127.0.0.1 TCP port that was free a moment ago: for a server in another process, which binds it itself
    (or for a URL nothing listens on). In-process servers bind port 0 instead (`serve`), which cannot race."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
