"""`python server.py stt-worker` as a child process, for the tests and benchmarks of speech-to-text over NATS.

Ready when it prints `stt-worker ready`; its output (one `decoding <kind> <request id>` line per request it takes)
is kept in `log`, so a test can see which worker holds a request and kill exactly that one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testing.net import start_child, stop_child

ROOT = Path(__file__).resolve().parents[1]


class SttWorkerProcess:
    def __init__(self, nats_url: str, worker_id: str, *, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), nice: int = 0) -> None:
        self.nats_url = nats_url
        self.nice = nice  # run it (and its decoding children) at this niceness
        self.id = worker_id
        # revisions with the live model unless told (what the tests compare them with; base would be joined into
        # the repository's ./data)
        self.env = {**os.environ, "LOG_LEVEL": "INFO", "REVISION_MODEL": "live", **(env or {}), "NATS_URL": nats_url}
        self.args = args  # more `server.py stt-worker` arguments (`--revisions only`)
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> None:
        self.log.clear()
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []
        self.proc = start_child([*prefix, sys.executable, str(ROOT / "server.py"), "stt-worker", "--id", self.id, *self.args],
                                lambda line: "stt-worker ready" in line, self.log, what=f"stt-worker {self.id}",
                                timeout=timeout, max_log=100_000, env=self.env, cwd=str(ROOT))

    def decoding(self) -> list[tuple[str, str]]:
        """(kind, request id) of every request this worker took, in order."""
        taken = []
        for line in list(self.log):
            if "decoding " in line:
                kind, rid = line.split("decoding ", 1)[1].split()[:2]
                taken.append((kind, rid))
        return taken

    def wait_decoding(self, n: int = 1, timeout: float = 60.0) -> list[tuple[str, str]]:
        """The requests taken once there are at least `n` (polls this process's output; raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while len(taken := self.decoding()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stt-worker {self.id} took {len(taken)} requests, not {n}")
            time.sleep(0.01)  # reading another process's output as it arrives
        return taken

    def revision_pid(self) -> int | None:
        """The process this worker's revisions decode in, once it said so (after its first revision)."""
        said = [line for line in list(self.log) if "revisions decode in process" in line]
        return int(said[-1].split("revisions decode in process ", 1)[1].split()[0]) if said else None

    def kill(self) -> None:
        """SIGKILL: a worker dying mid-decode."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_child(self.proc)
