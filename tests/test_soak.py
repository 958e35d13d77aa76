"""`python -m benchmarks.soak`, short: two rooms of back-to-back interviews for a minute against server.py.

What users rely on is asserted (the finals the interviewer's overlay received and the store holds are the same,
descriptors and threads back to where they were once everyone left, give or take what pools keep); memory, timing and turns without a final (on
a loaded machine the peers' own process can fall behind and lose audio) are the benchmark's to report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POOL_SLACK_FDS = 8
POOL_SLACK_THREADS = 4


@pytest.mark.slow
def test_a_short_soak_loses_no_final_and_gives_back_descriptors_and_threads(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--rooms", "2", "--minutes", "1", "--sample-s", "5",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=540)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads(out.read_text())["summary"]
    assert s["interviews"] >= 2 and s["failed_interviews"] == 0, s
    assert s["lost_finals"] == 0 and s["finals_received"] == s["segments_stored"] > 0, s
    assert s["participants_gone"], s
    # pools grow lazily up to their bound and keep what they grew (asyncio's default executor: one more thread seen;
    # the MongoDB driver's connection pool: an fd on each side, seen +4): a small slack, a leak would exceed it
    assert s["fds_after"] <= s["fds_baseline"] + POOL_SLACK_FDS, s
    assert s["threads_after"] <= s["threads_baseline"] + POOL_SLACK_THREADS, s
