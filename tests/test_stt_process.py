"""Local Whisper in child processes: same text as in-process, errors that name the cause, survives a dead child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from adapters.stt_process import WhisperProcesses
from adapters.stt_whisper import LocalWhisper
from pipeline.scheduler import SttScheduler
from pipeline.transcript import SttError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def procs() -> Iterator[WhisperProcesses]:
    p = WhisperProcesses(processes=2)
    yield p
    p.close()


def test_two_processes_decode_like_the_in_process_engine(procs: WhisperProcesses, jfk16k: np.ndarray) -> None:
    assert len(procs.pids) == 2 and os.getpid() not in procs.pids
    local = LocalWhisper(cpu_threads=1)
    here, there = local.transcribe(jfk16k), procs.transcribe(jfk16k)
    assert there.text == here.text and there.words == here.words
    partial = procs.transcribe(jfk16k[: 16000 * 3], partial=True)
    assert partial.text and not partial.words  # partials skip word timestamps, as in process
    assert procs.engine == "faster-whisper" and procs.model == "tiny.en"


async def test_revisions_run_beside_the_live_workers_in_a_lowest_priority_process(
    procs: WhisperProcesses, jfk16k: np.ndarray
) -> None:
    first, second = jfk16k[: 16000 * 5], jfk16k[16000 * 5 :]
    local = LocalWhisper(cpu_threads=1)
    context_text = local.transcribe(first).text
    here = local.revise(second, context=first, context_text=context_text)
    sched = SttScheduler(procs, workers=2)
    assert procs.revises_apart and sched.revises
    # a revision is not a live job: it runs while both live workers are busy
    finals = [asyncio.create_task(sched.transcribe_final(jfk16k)) for _ in range(2)]
    await asyncio.sleep(0.05)
    there = await sched.transcribe_revision(second, context=first, context_text=context_text)
    assert there is not None and there.text == here.text and there.words == here.words
    pid = procs.revision_pid
    assert pid is not None and pid not in procs.pids and os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert all(t.text for t in await asyncio.gather(*finals))
    await sched.aclose()


def test_workers_outlive_the_signals_that_start_a_graceful_shutdown(
    procs: WhisperProcesses, jfk16k: np.ndarray
) -> None:
    # Ctrl-C signals the whole process group; the server drains streams to their finals before it stops the pool
    for pid in procs.pids:
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.2)
    assert "ask not what your country" in procs.transcribe(jfk16k).text.lower() and procs.restarts == 0


def test_bad_audio_is_a_value_error_in_the_caller(procs: WhisperProcesses) -> None:
    with pytest.raises(ValueError, match="int16 or float32"):
        procs.transcribe(np.zeros(16000, np.float64))
    with pytest.raises(ValueError, match="1-D"):
        procs.transcribe(np.zeros((2, 16000), np.int16))


def test_bad_model_path_fails_at_start_with_the_reason(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="no model.bin"):
        WhisperProcesses(str(tmp_path), processes=1)


async def test_a_killed_worker_costs_a_re_decode_not_the_final(procs: WhisperProcesses, jfk16k: np.ndarray) -> None:
    sched = SttScheduler(procs, workers=2)
    long = np.tile(jfk16k, 2)  # ~22 s: still decoding when the workers are killed
    victim = asyncio.create_task(sched.transcribe_final(long))
    while not sched.busy:  # noqa: ASYNC110 - polling the scheduler's state, there is no event to wait on
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # in the child now (a 22 s decode takes several times longer)
    for pid in procs.pids:
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    again = await victim  # decoded once more on a new pool (its models load first)
    assert "ask not what your country" in again.text.lower() and procs.restarts == 1
    assert time.monotonic() - t0 < 60
    await sched.aclose()


def test_a_request_whose_workers_keep_dying_fails_with_stt_crashed(jfk16k: np.ndarray) -> None:
    p = WhisperProcesses(processes=1)
    stop = threading.Event()

    def killer() -> None:  # every worker the pool starts dies at once, as with a decoder crash on this input
        while not stop.is_set():
            for pid in p.pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    threading.Thread(target=killer, daemon=True).start()
    try:
        with pytest.raises(SttError) as err:
            p.transcribe(np.tile(jfk16k, 2))
        assert err.value.code == "stt_crashed" and p.restarts >= 2
    finally:
        stop.set()
        p.close()


def test_workers_exit_when_the_server_process_is_killed(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from adapters.stt_process import WhisperProcesses\n"
        "if __name__ == '__main__':\n"
        "    p = WhisperProcesses(processes=1)\n"
        "    print(p.pids[0], flush=True)\n"
        "    os._exit(9)  # dies like SIGKILL: no cleanup\n"
    )
    (tmp_path / "server_like.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "server_like.py")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    worker = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists(), "an orphaned worker kept running (and its model in memory)"


def test_closed_pool_reports_stt_closed(jfk16k: np.ndarray) -> None:
    p = WhisperProcesses(processes=1)
    p.close()
    with pytest.raises(SttError) as err:
        p.transcribe(jfk16k)
    assert err.value.code == "stt_closed"
