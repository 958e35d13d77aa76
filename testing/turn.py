"""A real TURN server for the credential tests: coturn (`turnserver`, Debian package coturn) as a child process on
loopback with the TURN REST API scheme (`use-auth-secret`), no configuration file, no TLS, its state in a temp dir.

Ready when its log says the UDP listener is open; nothing sleeps.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from testing.net import free_port, start_child, stop_child


def turnserver_binary() -> str | None:
    return shutil.which("turnserver") or ("/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None)


class TurnServer:
    def __init__(self, workdir: Path, binary: str, secret: str, realm: str = "interview.test") -> None:
        self.workdir = workdir
        self.binary = binary
        self.secret = secret
        self.realm = realm
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A UDP port: free_port probes TCP, and coturn listens on both; a clash shows as a start failure below.
        self.port = free_port()
        cmd = [self.binary, "-n", "-v",  # -v: the log then says when the listener is open
               "--listening-ip=127.0.0.1", f"--listening-port={self.port}",
               "--relay-ip=127.0.0.1", "--allow-loopback-peers", "--use-auth-secret",
               f"--static-auth-secret={self.secret}", f"--realm={self.realm}", "--no-tls", "--no-dtls", "--no-cli",
               "--log-file=stdout", "--simple-log",
               # one relay thread: with one per core (the default) the Allocate that answers the 401 challenge
               # was refused "438 Wrong nonce" in 3 of 9 runs here; with one thread, in none of 8
               "--relay-threads=1", f"--pidfile={self.workdir / 'turnserver.pid'}",
               f"--userdb={self.workdir / 'turndb'}", "--min-port=40000", "--max-port=40999"]
        self.proc = start_child(cmd, lambda line: "UDP listener opened on" in line
                                and line.rstrip().endswith(f":{self.port}"), self.log, what="turnserver",
                                timeout=timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_child(proc)
