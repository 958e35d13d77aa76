"""Child processes the service owns (the embedded nx-27017 and nats-server): one way to stop them."""

from __future__ import annotations

import asyncio
import subprocess


async def terminate(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`; waits in a thread, never on the loop."""
    if proc.poll() is None:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
