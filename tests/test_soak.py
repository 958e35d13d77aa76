"""`python -m benchmarks.soak`, short: two rooms of back-to-back interviews for half a minute against server.py.

What users rely on is asserted: the finals the interviewer's overlay received and the store holds are the same,
and once everyone left, descriptors and threads do not grow from round to round (after round 1, the warm-up,
against after round 2, the soak): anything more after round 2 must be in a pool that grows on demand up to a
bound, named by the benchmark. Memory, timing and turns without a final (on a loaded machine the peers' own process can
fall behind and lose audio) are the benchmark's to report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_short_soak_loses_no_final_and_gives_back_descriptors_and_threads(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--rooms", "2", "--minutes", "0.5", "--sample-s", "5",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads(out.read_text())["summary"]
    assert s["interviews"] >= 2 and s["failed_interviews"] == 0, s
    # every final the overlay received is stored and vice versa, but those stored after the interviewer left (its
    # own last turn, drained when it leaves): sent in order, they come after the last one it received
    assert s["lost_finals"] == 0 and s["finals_received"] + s["stored_after_overlay_closed"] == s["segments_stored"] > 0, s
    assert s["participants_gone"], s
    # Nothing per room stays: no UDP socket, accepted connection, pipe, eventfd or thread more than after round 1,
    # however many rooms round 2 held, but in the pools that grow on demand up to a bound (benchmarks.soak POOLS,
    # FD_POOLS: executors, the MongoDB connection pool, JetStream's block files), each within its bound.
    assert s["ok"]["fds_back"], s["fd_growth"]
    assert s["ok"]["threads_back"], s["thread_growth"]
