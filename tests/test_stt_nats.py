"""Speech-to-text workers over NATS: a real nats-server, `server.py stt-worker` child processes with tiny.en, JFK.

The same text as the local engine; finals before lower kinds across the cluster; a worker killed mid-decode costs a
retry on the other, not the final; with no worker the final is reported `stt_unavailable`, kept, and decoded once a
worker starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import nats
import numpy as np
import pytest

from adapters.stt_nats import NatsWhisper, decode_request, encode_request
from adapters.stt_whisper import LocalWhisper
from domain.events import ErrorEvent, SegmentEvent, Speaker, StreamEvent
from pipeline.scheduler import SttScheduler
from pipeline.stream import ParticipantStream, StreamConfig
from pipeline.transcript import SttError, Transcript
from testing.nats import NatsServer
from testing.stt_workers import SttWorkerProcess


def words(text: str) -> list[str]:
    return [w.strip(".,?!").lower() for w in text.split()]

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(nats_server: NatsServer) -> Iterator[list[SttWorkerProcess]]:
    started = [SttWorkerProcess(nats_server.url, f"w{i}") for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:  # both load their model at once
            list(pool.map(lambda w: w.start(), started))
        yield started
    finally:
        for w in started:
            w.stop()


@pytest.fixture
def client(nats_server: NatsServer) -> Iterator[NatsWhisper]:
    c = NatsWhisper(nats_server.url, wait_s=5.0)
    yield c
    c.close()


def _in_thread(fn: object, *args: object, **kwargs: object) -> Future[Transcript]:
    """A blocking engine call in a thread of its own (as the scheduler makes them)."""
    fut: Future[Transcript] = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args, **kwargs))  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            fut.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return fut


async def _publish_junk(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for junk in (b"", b"\x00\x00\x00\x02{}", encode_request({"kind": "final"}, b"\x00\x01")):
            await js.publish("stt.decode.final", junk, stream="STT")
    finally:
        await nc.close()


def test_request_headers_are_checked_where_they_enter() -> None:
    meta = {"kind": "final", "id": "r1", "reply": "_INBOX.x.r1", "deadline": 1e10, "samples": [2], "prompt": "Hi"}
    assert decode_request(encode_request(meta, b"\x01\x00\x02\x00")) == (meta, b"\x01\x00\x02\x00")
    for bad in ({**meta, "kind": "lyrics"}, {**meta, "samples": [-1]}, {**meta, "samples": []},
                {k: v for k, v in meta.items() if k != "reply"}):
        with pytest.raises(ValueError):
            decode_request(encode_request(bad, b""))
    with pytest.raises(ValueError):
        decode_request(b"\x00\x00\x00\x09{not json")


def test_workers_decode_like_the_local_engine(workers: list[SttWorkerProcess], client: NatsWhisper,
                                              whisper: LocalWhisper, jfk16k: np.ndarray) -> None:
    here, there = whisper.transcribe(jfk16k), client.transcribe(jfk16k)
    assert there.text == here.text and there.words == here.words
    partial = client.transcribe(jfk16k[: 16000 * 3], partial=True)
    assert partial.text and not partial.words  # a partial skips word timestamps, as locally
    # a hurried final (STT_HURRY: others wait behind it on its server) reaches the worker's decode process: greedy
    hurried = client.transcribe(jfk16k, hurry=True)
    assert hurried.confidence == whisper.transcribe(jfk16k, hurry=True).confidence != here.confidence
    # a revision's context makes it larger than NATS's max payload (1 MB): its audio goes through the object store
    context = np.concatenate([jfk16k] * 3)
    assert (context.size + jfk16k.size) * 2 > 1024 * 1024
    text = whisper.transcribe(jfk16k).text
    local_rev = whisper.revise(jfk16k, context=context, context_text=" ".join([text] * 3))
    nats_rev = client.revise(jfk16k, context=context, context_text=" ".join([text] * 3))
    assert (nats_rev.text, nats_rev.reason) == (local_rev.text, local_rev.reason)
    # a malformed request is dropped by the worker that takes it, which goes on working
    asyncio.run(_publish_junk(client.url))
    assert client.transcribe(jfk16k[: 16000 * 4]).text
    # requests in parallel spread over both workers
    futures = [_in_thread(client.transcribe, jfk16k[: 16000 * 4]) for _ in range(4)]
    assert len({f.result(60).text for f in futures}) == 1
    assert all(w.decoding() for w in workers) and client.workers == 2
    with pytest.raises(ValueError, match="int16 or float32"):
        client.transcribe(jfk16k.astype(np.float64))


def test_a_free_worker_takes_finals_before_lower_kinds(nats_server: NatsServer, jfk16k: np.ndarray) -> None:
    worker = SttWorkerProcess(nats_server.url, "solo")
    worker.start()
    client = NatsWhisper(nats_server.url, timeouts={"speculative": 120.0})  # it waits behind two finals here
    try:
        busy = _in_thread(client.transcribe, np.concatenate([jfk16k] * 2))  # keeps the only worker busy
        worker.wait_decoding(1)
        revision = _in_thread(client.revise, jfk16k[16000 * 5:], context=jfk16k[: 16000 * 5], context_text="And so")
        speculative = _in_thread(client.transcribe, jfk16k, kind="speculative")
        final = _in_thread(client.transcribe, jfk16k)
        for f in (busy, final, speculative, revision):
            f.result(120)
        # the live lane: finals first; the revision went to the revision lane (which was idle) at once
        taken = [kind for kind, _ in worker.decoding()]
        assert [k for k in taken if k != "revision"] == ["final", "final", "speculative"] and "revision" in taken
    finally:
        client.close()
        worker.stop()


def test_a_final_is_answered_while_the_worker_is_busy_with_a_revision(nats_server: NatsServer,
                                                                      jfk16k: np.ndarray) -> None:
    """One worker. Its revisions decode in a process at nice 19; stopped (SIGSTOP) mid-revision, that process holds
    the revision as long as the test wants, and the same worker still answers a final meanwhile."""
    worker = SttWorkerProcess(nats_server.url, "solo")
    worker.start()
    client = NatsWhisper(nats_server.url, wait_s=5.0)
    reviser = None
    try:
        client.revise(jfk16k[16000 * 5:], context=jfk16k[: 16000 * 5], context_text="And so")  # starts its process
        reviser = worker.revision_pid()
        assert reviser is not None and reviser != worker.pid
        assert os.getpriority(os.PRIO_PROCESS, reviser) == 19
        os.kill(reviser, signal.SIGSTOP)
        revision = _in_thread(client.revise, jfk16k[16000 * 5:], context=jfk16k[: 16000 * 5], context_text="And so")
        worker.wait_decoding(2)  # the revision lane took it: it cannot finish while its process is stopped
        final = client.transcribe(jfk16k)
        assert "ask not" in final.text.lower() and not revision.done()
        os.kill(reviser, signal.SIGCONT)
        reviser = None
        assert revision.result(60).text
        assert [kind for kind, _ in worker.decoding()] == ["revision", "revision", "final"]
    finally:
        if reviser is not None:
            os.kill(reviser, signal.SIGCONT)
        client.close()
        worker.stop()


def test_a_request_no_running_worker_decodes_is_refused_at_once(nats_server: NatsServer, jfk16k: np.ndarray,
                                                                 tmp_path: object) -> None:
    """With only `--revisions only` workers alive a final cannot be decoded: `stt_unavailable` at once (the stream
    keeps the audio and asks again), not a wait for its whole timeout. A `--revisions off` worker never needs the
    revision model: a bad REVISION_MODEL does not stop it."""
    reviser = SttWorkerProcess(nats_server.url, "reviser", args=("--revisions", "only"))
    live = SttWorkerProcess(nats_server.url, "live", args=("--revisions", "off"),
                            env={"REVISION_MODEL": str(tmp_path) + "/no-such-model"})
    reviser.start()
    client = NatsWhisper(nats_server.url, wait_s=3.0)
    try:
        assert client.revise(jfk16k[16000 * 5:], context=jfk16k[: 16000 * 5], context_text="And so").text
        with pytest.raises(SttError) as refused:
            client.transcribe(jfk16k)
        assert refused.value.code == "stt_unavailable" and "final" in refused.value.message
        live.start()
        deadline = time.monotonic() + 30
        while not client.workers_for("final"):  # its first heartbeat
            assert time.monotonic() < deadline, "the live worker's heartbeat never arrived"
            time.sleep(0.05)
        assert client.workers_for("revision") == 1  # the live worker does not revise
        assert "ask not" in client.transcribe(jfk16k).text.lower()
    finally:
        client.close()
        live.stop()
        reviser.stop()


def test_a_worker_killed_mid_decode_costs_a_retry_not_the_final(workers: list[SttWorkerProcess],
                                                                client: NatsWhisper, jfk16k: np.ndarray) -> None:
    expected = client.transcribe(jfk16k).text
    before = {w.id: len(w.decoding()) for w in workers}
    final = _in_thread(client.transcribe, jfk16k)
    taker = None
    while taker is None:  # whichever worker pulled it first
        taker = next((w for w in workers if len(w.decoding()) > before[w.id]), None)
        time.sleep(0.01)  # reading the workers' output as it arrives
        if final.done():
            pytest.fail("the final was answered before a worker could be seen taking it")
    taker.kill()
    assert final.result(60).text == expected
    other = next(w for w in workers if w is not taker)
    rid = taker.decoding()[-1][1]
    assert ("final", rid) in other.decoding()  # the same request, decoded again by the survivor


async def test_with_no_worker_the_final_is_kept_and_decoded_when_one_starts(
        nats_server: NatsServer, jfk16k: np.ndarray, whisper: LocalWhisper) -> None:
    stt = NatsWhisper(nats_server.url, wait_s=0.2)
    sched = SttScheduler(stt, workers=2)
    events: list[StreamEvent] = []
    got = asyncio.Event()

    def emit(e: StreamEvent) -> None:
        events.append(e)
        got.set()

    stream = ParticipantStream(Speaker("candidate", "C", "c1"), sched, emit, in_rate=16000, channels=1,
                               config=StreamConfig(partial_interval_s=0, emit_levels_every_s=0, revise=False,
                                                   final_retry_s=0.3))
    worker = SttWorkerProcess(nats_server.url, "late")
    try:
        with pytest.raises(SttError) as err:
            await asyncio.to_thread(stt.transcribe, jfk16k)
        assert err.value.code == "stt_unavailable"
        audio = np.concatenate([jfk16k, np.zeros(16000, np.int16)])  # the speech, then a second of silence
        for i in range(0, audio.size, 320):
            stream.push(audio[i:i + 320])
        while not any(isinstance(e, ErrorEvent) for e in events):
            got.clear()
            await asyncio.wait_for(got.wait(), 30)
        error = next(e for e in events if isinstance(e, ErrorEvent))
        assert error.code == "stt_unavailable" and error.affected["retrying"] is True
        assert not any(isinstance(e, SegmentEvent) and e.final for e in events)
        await asyncio.to_thread(worker.start)
        await asyncio.wait_for(stream.settle(), 60)
        finals = [e for e in events if isinstance(e, SegmentEvent) and e.final]
        assert [f.seq for f in finals] == [error.affected["seq"]]  # the kept utterance, no hole
        assert words(finals[0].text)[:4] == words(whisper.transcribe(jfk16k).text)[:4]  # (punctuation may differ)
        assert stream.stats["finals_retried"] == 1 and stream.stats["errors"] == 0
    finally:
        await stream.aclose()
        await sched.aclose()
        stt.close()
        worker.stop()


async def test_closing_the_client_fails_a_request_in_flight_instead_of_leaving_its_caller_waiting(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    client = NatsWhisper(nats_server.url, wait_s=0.0)

    async def quiet_worker() -> None:  # a worker that takes nothing, alive all along (its heartbeat, repeated
        while True:                    # well within the client's worker_ttl_s, however slow the machine)
            await nc.publish("stt.workers.quiet", b'{"id": "quiet"}')
            await nc.flush()
            await asyncio.sleep(0.5)

    beating = asyncio.create_task(quiet_worker())
    try:
        js = nc.jetstream()
        pending = None
        async with asyncio.timeout(10):  # polled: the heartbeat and the request live on the client's own loop
            while True:
                if pending is None and client.workers:
                    pending = _in_thread(client.transcribe, np.zeros(16000, dtype=np.float32))
                if pending is not None and (await js.stream_info("STT")).state.messages:
                    break  # queued: it waits for its reply
                await asyncio.sleep(0.01)
        assert pending is not None
        await asyncio.to_thread(client.close)
        with pytest.raises(SttError) as err:
            await asyncio.wait_for(asyncio.wrap_future(pending), 10)
        assert err.value.code == "stt_closed"
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        client.close()
        await nc.close()
