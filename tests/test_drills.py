"""Kill drills: real processes die or stop in the middle of an interview, and nothing that was said is lost.

* `kill -9` of the server (server.py as a child process with its own DATA_DIR and embedded store, two aiortc peers
  streaming a dialogue): restarted on the same DATA_DIR, the participants re-POST with the same join tokens; the
  stored transcript holds every final the interviewer received before the kill exactly once, and new finals
  follow with their seq continuing; also with the store writes held back, so that every final sent is in the
  journal only (the embedded nats-server's `SEGMENT_JOURNAL`) when the server dies.
* `kill -9` of a speech-to-text worker process costs a re-decode, not the final:
  `tests/test_stt_process.py::test_a_killed_worker_costs_a_re_decode_not_the_final` (and
  `test_workers_exit_when_the_server_process_is_killed` for the other direction).
* NATS and the store (an nx-27017 on a fixed port) stopped together for `OUTAGE_S` mid-interview: once they are
  back, every final the interviewer received is stored once and every stored segment's event is in the JetStream
  stream exactly once (counted by event id). `DRILL_OUTAGE_S=30` runs the full 30 s outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.live_server import ADMIN_KEY, live_server, test_settings
from testing.nats import NatsServer
from testing.net import free_port
from testing.server_process import ServerProcess
from testing.whip_client import WavChannelTrack, WhipSession, whip_publish

OUTAGE_S = float(os.environ.get("DRILL_OUTAGE_S", "10"))
Events = list[dict[str, Any]]


def finals_with_text(events: Events) -> dict[tuple[str, int], str]:
    """(speaker role, seq) -> text of every `segment.final` with text."""
    return {(e["speaker"]["role"], e["seq"]): e["text"] for e in events if e["type"] == "segment.final" and e["text"]}


async def collect(session: WhipSession, into: Events, until: Callable[[Events], bool], within_s: float) -> None:
    """Append the session's analysis messages to `into` until `until(into)`; fails with what came otherwise."""
    try:
        async with asyncio.timeout(within_s):
            while not until(into):
                into.append(await session.events.get())
    except TimeoutError:
        got = [(e["type"], (e.get("speaker") or {}).get("role"), e.get("seq"), e.get("text") or e.get("code"))
               for e in into if e["type"] not in ("level", "segment.partial", "sentiment", "keywords")]
        pytest.fail(f"not within {within_s} s; received {got}")


def drain(session: WhipSession, into: Events) -> None:
    while not session.events.empty():
        into.append(session.events.get_nowait())


async def create_interview(http: httpx.AsyncClient) -> tuple[str, str, str]:
    """A new interview and join tokens: (interview id, interviewer token, candidate token)."""
    r = await http.post("/api/interviews", json={"candidateId": "c-drill", "jobId": "j-drill",
                                                  "scheduledAt": "2030-01-01T09:00:00Z"})  # fmt: skip
    assert r.status_code == 201, r.text
    iid = r.json()["interviewId"]
    tokens = []
    for role in ("interviewer", "candidate"):
        t = await http.post(f"/api/interviews/{iid}/tokens", json={"role": role, "name": role.title()})
        assert t.status_code == 201, t.text
        tokens.append(t.json()["token"])
    return iid, tokens[0], tokens[1]


async def stored_segments(http: httpx.AsyncClient, iid: str) -> list[dict[str, Any]]:
    r = await http.get(f"/api/interviews/{iid}/transcript")
    assert r.status_code == 200, r.text
    return r.json()["segments"]  # type: ignore[no-any-return]


async def stored_eventually(http: httpx.AsyncClient, iid: str, expected: set[tuple[str, int]],
                            within_s: float = 60) -> list[dict[str, Any]]:
    """The stored segments once they include `expected` (persisting runs behind a queue, with retries)."""
    async with asyncio.timeout(within_s):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                segs = await stored_segments(http, iid)
                if {(s["speaker"]["role"], s["seq"]) for s in segs} >= expected:
                    return segs
            await asyncio.sleep(0.5)  # polling the store through the API


def assert_stored_once(stored: list[dict[str, Any]], received: dict[tuple[str, int], str]) -> None:
    keys = [(s["speaker"]["role"], s["seq"]) for s in stored]
    assert len(keys) == len(set(keys)), f"a segment is stored twice: {sorted(keys)}"
    by_key = {(s["speaker"]["role"], s["seq"]): s for s in stored}
    for key, text in received.items():
        assert key in by_key, f"final {key} {text!r} was sent to the interviewer but is not stored"
        assert by_key[key].get("originalText", by_key[key]["text"]) == text, (key, by_key[key], text)


# ------------------------------------------------------------------------------------------- server kill -9


@pytest.mark.slow
@pytest.mark.parametrize("held_back", [False, True], ids=["killed", "killed-before-storing"])
async def test_a_server_killed_mid_interview_restarts_with_every_sent_final_stored_once(
    tmp_path: Path, shared_data: Path, held_back: bool
) -> None:
    """`held_back`: the store writes are held back (SEGMENT_STORE_DELAY_S, tests only), so every final sent before the
    kill is in the journal only (the embedded nats-server's `SEGMENT_JOURNAL` under DATA_DIR) and the restarted
    server must store it from there."""
    wav = shared_data / "mobile_mixed.stereo.wav"
    server = ServerProcess(tmp_path / "data", admin_key=ADMIN_KEY)
    if held_back:
        server.extra_env["SEGMENT_STORE_DELAY_S"] = "3600"
    await server.start()
    sessions: list[WhipSession] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            iid, tok_i, tok_c = await create_interview(http)
            whip = f"{server.url}/whip/{iid}"
            interviewer = await whip_publish(whip, tok_i, track=WavChannelTrack(wav, 0), analysis=True)
            sessions.append(interviewer)
            sessions.append(await whip_publish(whip, tok_c, track=WavChannelTrack(wav, 1)))
            before: Events = []
            await collect(interviewer, before, lambda ev: len(finals_with_text(ev)) >= 3, within_s=180)
            if held_back:
                assert await stored_segments(http, iid) == []

            server.kill()
            server.extra_env.pop("SEGMENT_STORE_DELAY_S", None)
            drain(interviewer, before)  # whatever arrived before the process died
            sent = finals_with_text(before)
            for s in sessions:
                await s.close()  # its DELETE fails (logged): the server is gone
            sessions.clear()

            await server.start()  # same DATA_DIR, port and secrets
            interviewer = await whip_publish(whip, tok_i, track=WavChannelTrack(wav, 0, limit_s=12), analysis=True)
            sessions.append(interviewer)
            candidate = await whip_publish(whip, tok_c, track=WavChannelTrack(wav, 1, limit_s=12))
            sessions.append(candidate)
            last_seq = {role: max(seq for r, seq in sent if r == role) for role, _ in sent}
            after: Events = []

            def new_finals(ev: Events) -> dict[tuple[str, int], str]:
                return {k: t for k, t in finals_with_text(ev).items() if k[1] > last_seq.get(k[0], -1)}

            # the re-joined interviewer gets the stored backlog, then what is said now
            await collect(interviewer, after, lambda ev: {r for r, _ in new_finals(ev)} >= {"interviewer",
                                                                                           "candidate"}, 180)
            backlog = {k: t for k, t in finals_with_text(after).items() if k not in new_finals(after)}
            assert set(backlog) >= set(sent), (sorted(sent), sorted(backlog))
            await candidate.close()
            await collect(interviewer, after, lambda ev: any(
                e["type"] == "participant.left" and e["speaker"]["role"] == "candidate" for e in ev), 60)
            resumed = new_finals(after)
            stored = await stored_eventually(http, iid, set(sent) | set(resumed))
            assert_stored_once(stored, {**sent, **resumed})
            for role in ("interviewer", "candidate"):  # numbering continues where the killed server left it
                assert min(seq for r, seq in resumed if r == role) > last_seq[role], (role, sorted(resumed))
    finally:
        for s in sessions:
            await s.close()
        server.stop()


# ------------------------------------------------------------------------------------------ NATS and the store


class Nx27017:
    """nx-27017 on one fixed port, stoppable and restartable on the same data (the server's MONGODB_URL stays)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nx_27017.nx_27017", "--host", "127.0.0.1", "-p", str(self.port), "--data-dir",
             str(self.data_dir), "--log-file", str(self.data_dir / "nx.log"), "--pid-file",
             str(self.data_dir / "nx.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("nx-27017 did not listen")
            time.sleep(0.05)  # polling a starting process's port

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def nx(tmp_path: Path) -> Iterator[Nx27017]:
    store = Nx27017(tmp_path / "nx")
    store.start()
    try:
        yield store
    finally:
        store.stop()


@contextlib.asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def stream_messages(url: str, subject: str) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every message in the INTERVIEWS stream on `subject` (wildcards allowed)."""
    from adapters.nats_bus import MSG_ID_HEADER, STREAM

    async with jetstream(url) as js:
        info = await js.stream_info(STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(Exception):  # a deleted sequence number
                msg = await js.get_msg(STREAM, seq)
                if _matches(msg.subject, subject):
                    out.append((msg.subject, (msg.headers or {}).get(MSG_ID_HEADER, "")))
        return out


def _matches(subject: str, pattern: str) -> bool:
    s, p = subject.split("."), pattern.split(".")
    return all(a == b or b == "*" for a, b in zip(s, p, strict=False)) and (len(s) == len(p) or p[-1] == ">")


@pytest.mark.slow
async def test_nats_and_the_store_down_mid_interview_lose_nothing(
    tmp_path: Path, shared_data: Path, nats_server: NatsServer, nx: Nx27017
) -> None:
    wav = shared_data / "mobile_mixed.stereo.wav"
    settings = test_settings(tmp_path, nx.url, nats_url=nats_server.url)
    async with live_server(settings) as live:
        iid, tok_i, tok_c = await create_interview(live.http)
        whip = f"{live.url}/whip/{iid}"
        tracks = [WavChannelTrack(wav, 0), WavChannelTrack(wav, 1)]
        interviewer = await whip_publish(whip, tok_i, track=tracks[0], analysis=True)
        candidate = await whip_publish(whip, tok_c, track=tracks[1])
        received: Events = []
        try:
            await collect(interviewer, received, lambda ev: len(finals_with_text(ev)) >= 2, within_s=180)
            nats_server.stop()
            nx.stop()
            t_down = time.monotonic()
            # the interview goes on: finals still reach the interviewer while both are down
            n_before = len(finals_with_text(received))
            await collect(interviewer, received, lambda ev: len(finals_with_text(ev)) > n_before, within_s=60)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))  # the outage is the drill
            during = len(finals_with_text(received)) - n_before
            assert (await live.http.get("/readyz")).status_code == 503
            nx.start()
            nats_server.start()
            await asyncio.gather(*(t.wait_finished() for t in tracks))
            await candidate.close()
            await collect(interviewer, received, lambda ev: any(
                e["type"] == "participant.left" and e["speaker"]["role"] == "candidate" for e in ev), 60)
        finally:
            await candidate.close()
            await interviewer.close()
        sent = finals_with_text(received)
        stored = await stored_eventually(live.http, iid, set(sent), within_s=90)
        assert_stored_once(stored, sent)
        # every stored segment's event reaches the stream once the relay has caught up, and only once
        relay = live.components.relay
        assert relay is not None
        async with asyncio.timeout(90):
            await relay.wait_until(lambda r: r.healthy and r.backlog == 0)
        published = await stream_messages(nats_server.url, f"interviews.{iid}.segment")
        ids = [msg_id for _, msg_id in published]
        assert len(ids) == len(set(ids)), f"an event was published twice: {ids}"
        assert len(ids) == len(stored), (len(ids), len(stored))
        print(f"{OUTAGE_S:.0f} s outage: {during} finals sent while down; {len(sent)} sent in all, {len(stored)} stored,"
              f" {len(ids)} segment events in the stream, each id once")


def test_the_journal_gives_back_what_was_never_marked_stored(tmp_path: Path) -> None:
    from adapters.rooms import SegmentJournal
    from domain.events import SegmentEvent, Speaker

    def seg(seq: int, text: str) -> SegmentEvent:
        return SegmentEvent(Speaker("candidate", "Cat", "p1"), seq, 1.0 * seq, 1.0 * seq + 0.5, text, final=True)

    journal = SegmentJournal(tmp_path / "segments.journal")
    a, b, c = (journal.append("iv1", seg(k, f"text {k}")) for k in range(3))
    journal.done(a)
    journal.done(c)
    journal.close()
    with open(journal.path, "a", encoding="utf-8") as f:
        f.write('{"n": 3, "interviewId": "iv1", "segm')  # the line a kill cut short
    left = SegmentJournal(journal.path).pending()
    assert [(iid, s.seq, s.text, s.speaker.participant_id) for iid, s in left] == [("iv1", 1, "text 1", "p1")]
    assert left[0][1].final and left[0][1].end_s == 1.5
    journal = SegmentJournal(journal.path)  # everything done: the file is emptied
    journal.done(journal.append("iv1", seg(4, "text 4")))
    assert journal.path.read_text() == "" and SegmentJournal(journal.path).pending() == []

    # the server's journal is sealed with a key from the master key file: no transcript on disk in clear
    from adapters.crypto import MasterKeys

    keys = MasterKeys.generate()
    sealed = SegmentJournal(tmp_path / "sealed.journal", keys.journal_key())
    sealed.append("iv1", seg(5, "my lighthouse in Reykjavik"))
    sealed.close()
    on_disk = sealed.path.read_text()
    assert "Reykjavik" not in on_disk and "Cat" not in on_disk and '"enc1:journal:' in on_disk
    [(iid, back)] = SegmentJournal(sealed.path, keys.journal_key()).pending()
    assert (iid, back.seq, back.text, back.speaker.name) == ("iv1", 5, "my lighthouse in Reykjavik", "Cat")
    assert SegmentJournal(sealed.path, MasterKeys.generate().journal_key()).pending() == []  # another key
