"""Speech-to-text as a service on NATS JetStream: `NatsWhisper` (the engine a server decodes through) and `SttWorker`
(`python server.py stt-worker`: one `LocalWhisper` that takes decode requests from any number of servers).

    server: SttScheduler ─► NatsWhisper.transcribe ─► JetStream stream STT, subject stt.decode.<kind> ─┐
                                     ▲                                                                 │ pull
            reply (core NATS) ───────┴──────────── SttWorker (any number, any machine) ◄──────────────┘

* **Finals first across the cluster.** One work-queue consumer per kind (`final`, `speculative`, `partial`,
  `revision`), shared by every worker. A worker has two lanes, each decoding one request at a time: the live lane
  (final, speculative, partial) and the revision lane, whose decodes run in a process at nice 19. A lane pulls
  only when it is idle, and then asks its kinds in that order (`no_wait` pulls: the first kind with work wins), so
  a final never waits behind a lower kind while a live lane is free, and never behind a revision at all: anything
  delivered to a busy lane is nak'ed at once and goes to the next idle one.
* **A worker dying mid-decode costs a retry, not a final.** While it decodes, a worker tells JetStream it is still
  working (`in_progress`) every `PROGRESS_S`; a message not acknowledged within `ACK_WAIT_S` of the last sign of
  life is delivered again, to another worker. The server takes the first reply.
* **No worker answering** (none has sent a heartbeat on `stt.workers.<id>` for `worker_ttl_s`, or a request
  outlived its kind's timeout) is `SttError("stt_unavailable")`, the code `OpenAITranscriber` uses for an
  unreachable server; the request is withdrawn from the queue. The stream keeps the utterance and asks again
  (`pipeline.stream`: an `error` event, then the final once workers are back).
* **Payloads.** The audio travels as 16 kHz PCM16 after a length-prefixed JSON header; a request larger than the
  server's `max_payload` (a revision carries up to ~45 s of context) puts its audio in the JetStream object store
  bucket `stt-audio` and names it in the header.

`NatsWhisper.transcribe` is blocking like every engine (the scheduler calls it from its threads): the client runs
on an event loop in a thread of its own, so the server's loop does no NATS work for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.object_store import ObjectStore

from adapters.nats_bus import redact_url
from domain.events import Word
from pipeline.transcript import SAMPLE_RATE, SttError, Transcript, as_float_audio

log = logging.getLogger(__name__)

STREAM = "STT"
SUBJECT = "stt.decode"  # + "." + kind
KINDS = ("final", "speculative", "partial", "revision")  # the order a free worker asks for work in
HEARTBEAT_SUBJECT = "stt.workers"  # + "." + worker id
BUCKET = "stt-audio"
ACK_WAIT_S = 3.0  # a worker silent this long (no progress, no ack) is taken for dead: its request goes to another
PROGRESS_S = 0.5  # a decoding worker's sign of life to JetStream
HEARTBEAT_S = 1.0  # a worker's sign of life to the servers
IDLE_PULL_S = 1.0  # an idle worker's pull requests expire (and are renewed) this often
STREAM_MAX_AGE_S = 600.0  # a request nobody took in ten minutes is gone (its server gave up long before)
# how long a request of each kind may wait for its transcript: a partial is stale in a second, a speculative final
# once the utterance closes; a final or a revision waits as long as workers are alive, up to this
KIND_TIMEOUT_S = {"final": 120.0, "speculative": 5.0, "partial": 2.0, "revision": 60.0}
_HEADER = struct.Struct(">I")

_T = TypeVar("_T")
_TRANSIENT = (nats.errors.Error, asyncio.TimeoutError, OSError)


# ---- wire format -------------------------------------------------------------------------------------------
def _pcm16(audio: np.ndarray) -> bytes:
    if audio.dtype == np.int16:
        return audio.tobytes()
    return (np.clip(as_float_audio(audio), -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()


def encode_request(meta: dict[str, Any], pcm: bytes) -> bytes:
    head = json.dumps(meta, separators=(",", ":")).encode()
    return _HEADER.pack(len(head)) + head + pcm


def decode_request(data: bytes) -> tuple[dict[str, Any], bytes]:
    if len(data) < _HEADER.size:
        raise ValueError("request shorter than its header")
    (n,) = _HEADER.unpack_from(data)
    meta = json.loads(data[_HEADER.size:_HEADER.size + n])  # JSONDecodeError is a ValueError
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
        raise ValueError("request header without a known kind")
    samples = meta.get("samples")
    if not (isinstance(meta.get("id"), str) and isinstance(meta.get("reply"), str)
            and isinstance(meta.get("deadline"), int | float) and isinstance(samples, list)
            and 1 <= len(samples) <= 3 and all(isinstance(c, int) and c >= 0 for c in samples)):
        raise ValueError("request header lacks id, reply, deadline or sample counts")
    return meta, data[_HEADER.size + n:]


def _split_pcm(meta: dict[str, Any], pcm: bytes) -> list[np.ndarray]:
    """The request's audio, context and after (16 kHz int16) from its concatenated PCM."""
    counts = [int(c) for c in meta["samples"]]
    samples = np.frombuffer(pcm, dtype=np.int16)
    if sum(counts) != samples.size:
        raise ValueError(f"request says {sum(counts)} samples, carries {samples.size}")
    bounds = np.cumsum([0, *counts])
    return [samples[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def transcript_to_json(tr: Transcript) -> dict[str, Any]:
    return dataclasses.asdict(tr)


def transcript_from_json(d: dict[str, Any]) -> Transcript:
    words = [Word(**w) for w in d.pop("words", [])]
    return Transcript(words=words, **d)


# ---- shared set-up -----------------------------------------------------------------------------------------
async def ensure_stream(js: JetStreamContext) -> ObjectStore:
    """The work-queue stream, its four consumers and the audio bucket (created by whoever comes first; the same
    configuration again is a no-op)."""
    config = StreamConfig(name=STREAM, subjects=[f"{SUBJECT}.*"], retention=RetentionPolicy.WORK_QUEUE,
                          storage=StorageType.MEMORY, max_age=STREAM_MAX_AGE_S)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # exists with another configuration (an older version): adopt ours
        await js.update_stream(config)
    for kind in KINDS:
        await js.add_consumer(STREAM, ConsumerConfig(
            durable_name=kind, filter_subject=f"{SUBJECT}.{kind}", ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S, max_deliver=-1, max_waiting=4096))
    try:
        return await js.object_store(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_object_store(BUCKET, ObjectStoreConfig(storage=StorageType.MEMORY,
                                                                      ttl=STREAM_MAX_AGE_S))


def _status(msg: Msg) -> str | None:
    """The status of a JetStream control message (404 no messages, 408 request expired, ...), None for data."""
    if msg.headers and not msg.data:
        return msg.headers.get("Status")
    return None


# ---- the engine a server decodes through -------------------------------------------------------------------
class NatsWhisper:
    """The `SpeechToText` port over NATS: `transcribe` and `revise` run on whichever `SttWorker` takes them.

    Built with the server's `NATS_URL` (blocking: connects and sets up the stream). `model` names what the workers
    run (the server's STT_MODEL, as every worker of a deployment loads the same one). For `wait_s` after connecting
    a request waits for a first worker heartbeat; later, with no worker alive, it fails at once (`stt_unavailable`).
    """

    engine = "faster-whisper"
    revises_apart = True  # SttScheduler: revisions go out beside the live work; workers revise in a lane at nice 19

    def __init__(self, url: str, *, model: str = "tiny.en", wait_s: float = 2.0, worker_ttl_s: float = 3.0,
                 timeouts: dict[str, float] | None = None, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.model = model
        self.wait_s = wait_s
        self.worker_ttl_s = worker_ttl_s
        self.timeouts = {**KIND_TIMEOUT_S, **(timeouts or {})}
        self._workers: dict[str, float] = {}  # worker id -> monotonic time of its last heartbeat
        self._kinds: dict[str, frozenset[str]] = {}  # worker id -> the request kinds its lanes decode
        self._worker_seen = asyncio.Event()
        self._opened = time.monotonic()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._nc = NatsClient()
        self._js: JetStreamContext | None = None
        self._bucket: ObjectStore | None = None
        self._prefix = f"_INBOX.stt.{uuid.uuid4().hex}"
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stt-nats", daemon=True)
        self._thread.start()
        try:
            self._run(self._open(), timeout=connect_timeout_s)
        except Exception as exc:
            self.close()
            raise ValueError(f"speech-to-text over NATS: cannot set up {redact_url(url)}: {exc!r}") from exc

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _open(self) -> None:
        self._worker_seen = asyncio.Event()  # bound to this loop
        self._opened = time.monotonic()
        await self._nc.connect(self.url, name="stt-client", reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int, slept as float
                               max_reconnect_attempts=-1, allow_reconnect=True)
        self._js = self._nc.jetstream()
        self._bucket = await ensure_stream(self._js)
        await self._nc.subscribe(f"{HEARTBEAT_SUBJECT}.*", cb=self._on_heartbeat)
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_heartbeat(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            beat = json.loads(msg.data)
            if beat.get("bye"):
                self._workers.pop(str(beat["id"]), None)
                self._kinds.pop(str(beat["id"]), None)
            else:
                lanes = beat.get("lanes")
                if isinstance(lanes, dict):  # which kinds it decodes (a worker of an older version: every kind)
                    self._kinds[str(beat["id"])] = frozenset(k for lane in lanes.values() for k in lane["kinds"])
                self._workers[str(beat["id"])] = time.monotonic()
                self._worker_seen.set()

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._pending.get(msg.subject.rsplit(".", 1)[-1])
        if fut is not None and not fut.done():
            with contextlib.suppress(ValueError):
                fut.set_result(json.loads(msg.data))

    @property
    def workers(self) -> int:
        """Workers heard from within `worker_ttl_s`."""
        now = time.monotonic()
        return sum(1 for seen in self._workers.values() if now - seen <= self.worker_ttl_s)

    def workers_for(self, kind: str) -> int:
        """Workers heard from within `worker_ttl_s` that decode `kind` (`--revisions only|off` leave some out)."""
        now = time.monotonic()
        return sum(1 for wid, seen in self._workers.items()
                   if now - seen <= self.worker_ttl_s and kind in self._kinds.get(wid, (kind,)))

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False,
                   kind: str | None = None, vocabulary: tuple[str, ...] = (), hurry: bool = False) -> Transcript:
        """`LocalWhisper.transcribe` on a worker; `kind` ("final", "speculative", "partial") sets its priority
        (default: "partial" for `partial`, else "final"); `vocabulary`: the interview's terms."""
        kind = kind or ("partial" if partial else "final")
        if kind not in KINDS[:3]:
            raise ValueError(f"kind must be final, speculative or partial, not {kind!r}")
        meta: dict[str, Any] = {"kind": kind, "prompt": prompt, "partial": partial}
        if vocabulary:
            meta["vocabulary"] = list(vocabulary)
        if hurry:
            meta["hurry"] = True
        return self._request(meta, [audio])

    def revise(self, audio: np.ndarray, *, context: np.ndarray, context_text: str,
               after: np.ndarray | None = None, vocabulary: tuple[str, ...] = ()) -> Transcript:
        """`LocalWhisper.revise` on a worker, at the lowest priority."""
        parts = [audio, context] + ([after] if after is not None else [])
        meta: dict[str, Any] = {"kind": "revision", "context_text": context_text}
        if vocabulary:
            meta["vocabulary"] = list(vocabulary)
        return self._request(meta, parts)

    def _request(self, meta: dict[str, Any], parts: list[np.ndarray]) -> Transcript:
        for p in parts:
            as_float_audio(p)  # a bad array is the caller's error, raised here
        if self._closed:
            raise SttError("stt_closed", "speech-to-text client is closed")
        pcm = b"".join(_pcm16(p) for p in parts)
        meta["samples"] = [int(p.size) for p in parts]
        timeout_s = self.timeouts[meta["kind"]]
        try:
            reply = self._run(self._ask(meta, pcm, timeout_s))
        except RuntimeError as exc:  # the client's loop is stopped: close() raced this request
            raise SttError("stt_closed", str(exc)) from exc
        if not reply.get("ok"):
            raise SttError(str(reply.get("code", "stt_failed")), str(reply.get("message", "worker failed")))
        return transcript_from_json(reply["transcript"])

    async def _ask(self, meta: dict[str, Any], pcm: bytes, timeout_s: float) -> dict[str, Any]:
        assert self._js is not None and self._bucket is not None
        kind = str(meta["kind"])
        if not self.workers_for(kind):
            # just connected: the running workers' first heartbeats may be on the way. Later, fail at once: the
            # stream asks again, and a request must not hold one of the scheduler's few slots while it waits
            left = self._opened + self.wait_s - time.monotonic()
            if left > 0:
                self._worker_seen.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._worker_seen.wait()
            if not self.workers_for(kind):
                raise SttError("stt_unavailable", f"no speech-to-text worker that decodes {kind} requests is running")
        rid = uuid.uuid4().hex
        meta.update(id=rid, reply=f"{self._prefix}.{rid}", deadline=time.time() + timeout_s)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        seq: int | None = None
        stored = False
        try:
            data = encode_request(meta, pcm)
            if len(data) > self._nc.max_payload - 1024:  # headroom for the headers JetStream adds
                await self._bucket.put(rid, pcm)
                stored = True
                data = encode_request({**meta, "object": rid}, b"")
            try:
                ack = await self._js.publish(f"{SUBJECT}.{meta['kind']}", data, stream=STREAM, timeout=2.0)
            except _TRANSIENT as exc:
                raise SttError("stt_unavailable", f"cannot queue the request on NATS: {exc!r}") from exc
            seq = ack.seq
            deadline = time.monotonic() + timeout_s
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.25)
                if done:
                    seq = None  # acknowledged (removed) by the worker that answered
                    return fut.result()
                if not self.workers_for(kind):
                    raise SttError("stt_unavailable", "every speech-to-text worker went away during the request")
                if time.monotonic() > deadline:
                    raise SttError("stt_unavailable", f"no speech-to-text worker answered within {timeout_s:.0f} s")
        finally:
            self._pending.pop(rid, None)
            if seq is not None:  # withdrawn: a worker that comes back must not decode it for nobody
                with contextlib.suppress(*_TRANSIENT, nats.js.errors.Error):
                    await self._js.delete_msg(STREAM, seq)
            if stored:
                with contextlib.suppress(*_TRANSIENT, nats.js.errors.Error):
                    await self._bucket.delete(rid)

    async def _shutdown(self) -> None:
        """Requests in flight fail (`stt_closed`) and withdraw themselves before the connection closes: a caller's
        thread waiting on one would otherwise wait forever once the loop stops."""
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(SttError("stt_closed", "speech-to-text client is closed"))
        asks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if asks:
            await asyncio.wait(asks, timeout=2.0)
        await self._nc.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._run(self._shutdown(), timeout=5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
        if not self._loop.is_running():
            self._loop.close()


# ---- the worker --------------------------------------------------------------------------------------------
LIVE_KINDS = KINDS[:3]
REVISION_LANES = ("nice", "off", "only")  # `--revisions`: see SttWorker


class _Lane:
    """One decode at a time over `kinds`, asked in that order: its own pulls, inbox and busy state."""

    def __init__(self, worker: SttWorker, name: str, kinds: tuple[str, ...]) -> None:
        self.worker = worker
        self.name = name
        self.kinds = kinds
        self.inbox = f"{worker.inbox}.{name}"
        self.offer: asyncio.Future[Msg] | None = None  # set while idle: the first request delivered takes it
        self.now: dict[str, asyncio.Future[Msg | None]] = {}  # kind -> its `no_wait` pull's answer
        self.busy = False

    async def subscribe(self, nc: NatsClient) -> None:
        for kind in self.kinds:
            await nc.subscribe(f"{self.inbox}.now.{kind}", cb=functools.partial(self._on_now, kind))
        await nc.subscribe(f"{self.inbox}.wait", cb=self._on_delivery)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msg = await self._next(stop)
            except _TRANSIENT as exc:  # NATS down: nats-py reconnects; ask again shortly
                log.warning("stt-worker: cannot pull work: %r", exc)
                await _sleep_or(stop, 0.5)
                continue
            if msg is not None:
                self.busy = True
                try:
                    await self.worker.handle(msg)
                finally:
                    self.busy = False

    async def _next(self, stop: asyncio.Event) -> Msg | None:
        """The next request, in `kinds` order: ask each kind for one waiting now; if none waits, leave a pull
        request on every kind and take the first request delivered.

        JetStream delivers a request under its own subject (`stt.decode.final`), not the inbox it was pulled to, so
        nats-py's `request()` cannot match it to its pull: the pulls reply to subscriptions of their own."""
        nc = self.worker.nc
        loop = asyncio.get_running_loop()
        for kind in self.kinds:
            self.now[kind] = now = loop.create_future()
            try:
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{kind}", b'{"batch":1,"no_wait":true}',
                                 reply=f"{self.inbox}.now.{kind}")
                try:
                    async with asyncio.timeout(2.0):
                        msg = await now
                except TimeoutError:
                    # the answer may have landed in the same loop step as the timeout: keep it (an un-acked
                    # request would come back only after ACK_WAIT_S)
                    if not now.done() or now.cancelled():
                        raise
                    msg = now.result()
            finally:
                self.now.pop(kind, None)
            if msg is not None:
                return msg
        self.offer = offer = loop.create_future()
        pull = json.dumps({"batch": 1, "expires": int(IDLE_PULL_S * 1e9)}).encode()
        for kind in self.kinds:
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{kind}", pull, reply=f"{self.inbox}.wait")
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({offer, stopping}, timeout=IDLE_PULL_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self.offer = None
        if offer.done():
            return offer.result()
        offer.cancel()
        return None

    async def _on_now(self, kind: str, msg: Msg) -> None:
        now = self.now.get(kind)
        if now is not None and not now.done():
            now.set_result(None if _status(msg) is not None else msg)
        elif _status(msg) is None:
            self.worker.give_back(msg)

    async def _on_delivery(self, msg: Msg) -> None:
        if _status(msg) is not None or not msg.reply:
            return  # a pull request expired (408)
        if self.offer is not None and not self.offer.done():
            self.offer.set_result(msg)
        else:
            self.worker.give_back(msg)


class SttWorker:
    """Takes decode requests from NATS and runs them on `stt`, one at a time per lane.

    `revisions` says how this worker takes revisions (`python server.py stt-worker --revisions`):
    * "nice" (default): two lanes. The live lane takes finals, speculative finals and partials (in that order) and
      decodes them with `stt.transcribe`; the revision lane takes revisions and decodes them with `stt.revise`,
      which `WhisperProcesses` runs in a process of its own at nice 19. A revision in progress therefore holds
      neither the live lane nor the CPU a live decode wants: a final is taken at once even by a worker revising.
    * "off": the live lane only (leave revisions to other workers);
    * "only": the revision lane only (a worker on spare cores; `run_worker` lowers its whole process to nice 19).

    `run(stop)` until `stop` is set; the decodes in progress are finished and answered first.
    """

    def __init__(self, stt: Any, url: str, *, worker_id: str | None = None, revisions: str = "nice") -> None:
        if revisions not in REVISION_LANES:
            raise ValueError(f"revisions must be one of {', '.join(REVISION_LANES)}, not {revisions!r}")
        self.stt = stt
        # an engine that decodes a hurried final greedily (LocalWhisper, WhisperProcesses); others ignore the flag
        self._takes_hurry = "hurry" in inspect.signature(stt.transcribe).parameters
        self.url = url
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.decodes = 0
        self.nc = NatsClient()
        self._js: JetStreamContext | None = None
        self._bucket: ObjectStore | None = None
        self.inbox = f"_INBOX.sttw.{uuid.uuid4().hex}"
        self.lanes = ([_Lane(self, "live", LIVE_KINDS)] if revisions != "only" else []) + (
            [_Lane(self, "revision", ("revision",))] if revisions != "off" else [])
        self._stragglers: set[asyncio.Task[None]] = set()
        self._reviser: int | None = None  # the revision process last reported in the log

    async def run(self, stop: asyncio.Event, *, ready: Callable[[], None] | None = None) -> None:
        await self.nc.connect(self.url, name=f"stt-worker {self.id}", reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int, slept as float
                              max_reconnect_attempts=-1, allow_reconnect=True)
        self._js = self.nc.jetstream()
        self._bucket = await ensure_stream(self._js)
        for lane in self.lanes:
            await lane.subscribe(self.nc)
        beat = asyncio.create_task(self._heartbeats(stop), name="stt-heartbeat")
        if ready is not None:
            ready()
        try:
            async with asyncio.TaskGroup() as lanes:
                for lane in self.lanes:
                    lanes.create_task(lane.run(stop), name=f"stt-lane-{lane.name}")
        finally:
            beat.cancel()
            with contextlib.suppress(*_TRANSIENT):
                await self.nc.publish(f"{HEARTBEAT_SUBJECT}.{self.id}",
                                      json.dumps({"id": self.id, "bye": True}).encode())
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        subject = f"{HEARTBEAT_SUBJECT}.{self.id}"
        while not stop.is_set():
            beat = {"id": self.id, "model": getattr(self.stt, "model", ""), "pid": os.getpid(),
                    "busy": any(lane.busy for lane in self.lanes),
                    "lanes": {lane.name: {"kinds": list(lane.kinds), "busy": lane.busy} for lane in self.lanes},
                    "revision_pid": getattr(self.stt, "revision_pid", None)}
            with contextlib.suppress(*_TRANSIENT):
                await self.nc.publish(subject, json.dumps(beat).encode())
            await _sleep_or(stop, HEARTBEAT_S)

    def give_back(self, msg: Msg) -> None:
        """A request delivered on a pull left from idle time while its lane is busy: straight back to the queue,
        for an idle worker (a final must not wait behind this worker's decode)."""
        task = asyncio.create_task(_settle(msg.nak()))
        self._stragglers.add(task)
        task.add_done_callback(self._stragglers.discard)

    async def handle(self, msg: Msg) -> None:
        assert self._bucket is not None
        try:
            meta, pcm = decode_request(msg.data)
        except ValueError as exc:
            log.warning("stt-worker: dropped a malformed request: %s", exc)
            await _settle(msg.term())
            return
        if meta["deadline"] < time.time():  # its server gave up on it: nobody would read the answer
            await _settle(msg.term())
            return
        progress = asyncio.create_task(self._progress(msg))
        t0 = time.perf_counter()
        try:
            if meta.get("object"):
                pcm = (await self._bucket.get(str(meta["object"]))).data or b""
            parts = _split_pcm(meta, pcm)
            log.info("decoding %s %s (%.2f s of audio)", meta["kind"], meta["id"], parts[0].size / SAMPLE_RATE)
            tr = await asyncio.to_thread(self._decode, meta, parts)
            reply: dict[str, Any] = {"ok": True, "transcript": transcript_to_json(tr), "worker": self.id}
        except SttError as exc:
            reply = {"ok": False, "code": exc.code, "message": exc.message, "worker": self.id}
        except (ValueError, nats.js.errors.Error) as exc:
            reply = {"ok": False, "code": "stt_bad_request", "message": str(exc), "worker": self.id}
        except Exception as exc:  # noqa: BLE001 - one failed decode is that request's error, not the worker's end
            log.exception("stt-worker: decode failed")
            reply = {"ok": False, "code": "stt_failed", "message": f"{type(exc).__name__}: {exc}", "worker": self.id}
        finally:
            progress.cancel()
        self.decodes += 1
        log.debug("decoded %s %s in %.3f s", meta["kind"], meta["id"], time.perf_counter() - t0)
        if meta["kind"] == "revision" and (pid := getattr(self.stt, "revision_pid", None)) != self._reviser:
            self._reviser = pid  # said once per revision process (a new one after a crash)
            if pid is not None:
                log.info("revisions decode in process %d at nice %d", pid, _nice_of(pid))
        try:
            await self.nc.publish(str(meta["reply"]), json.dumps(reply).encode())
        except _TRANSIENT as exc:  # the server would wait out its deadline: let another delivery answer it
            log.warning("stt-worker: the reply to %s could not be sent (%s); the request goes back", meta["id"], exc)
            await _settle(msg.nak())
            return
        await _settle(msg.ack())

    def _decode(self, meta: dict[str, Any], parts: list[np.ndarray]) -> Transcript:
        # the interview's terms, when it has any (an engine without a vocabulary never sees the argument)
        extra: dict[str, Any] = {"vocabulary": tuple(str(t) for t in meta["vocabulary"])} if meta.get("vocabulary") \
            else {}
        if meta["kind"] == "revision":
            after = parts[2] if len(parts) > 2 else None
            result: Transcript = self.stt.revise(parts[0], context=parts[1], context_text=str(meta["context_text"]),
                                                 after=after, **extra)
            return result
        if meta.get("hurry") is True and self._takes_hurry:
            extra["hurry"] = True  # a final others wait behind on its server: greedy (LocalWhisper.transcribe)
        return self.stt.transcribe(parts[0], prompt=meta.get("prompt"), partial=bool(meta.get("partial")), **extra)

    @staticmethod
    async def _progress(msg: Msg) -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)  # the decode runs in a thread; this loop only says it is still alive
            await _settle(msg.in_progress())


def _nice_of(pid: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return 0


async def _settle(op: Awaitable[None]) -> None:
    with contextlib.suppress(*_TRANSIENT, nats.errors.MsgAlreadyAckdError):
        await op


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def run_worker(url: str, model_path: str | None, *, cpu_threads: int = 1, worker_id: str | None = None,
               revisions: str = "nice", revision_model: Any = None, beam_size: int = 5) -> int:
    """`python server.py stt-worker`: load the models, serve decode requests until SIGTERM/SIGINT (the decodes in
    progress are finished and answered first). Prints `stt-worker ready: <id>` once it takes requests.

    Live decodes run in one child process (`WhisperProcesses`), revisions in another at nice 19 with
    `revision_model` (REVISION_MODEL, as the local engine), started on the first revision; this process only
    talks to NATS. With `revisions="only"` the whole worker runs at nice 19 and decodes in its own process."""
    import signal

    from adapters.stt_process import WhisperProcesses
    from adapters.stt_whisper import LocalWhisper

    if revisions not in REVISION_LANES:
        print(f"stt-worker: --revisions must be one of {', '.join(REVISION_LANES)}", flush=True)
        return 2
    try:
        if revisions == "only":
            os.setpriority(os.PRIO_PROCESS, 0, WhisperProcesses.REVISION_NICE)
            stt: Any = LocalWhisper(model_path, cpu_threads=cpu_threads, revision_model=revision_model,
                                    beam_size=beam_size)
        else:
            stt = WhisperProcesses(model_path, processes=1, cpu_threads=cpu_threads, revision_model=revision_model,
                                   beam_size=beam_size)
    except ValueError as exc:
        print(f"stt-worker: {exc}", flush=True)
        return 2
    worker = SttWorker(stt, url, worker_id=worker_id, revisions=revisions)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        lanes = ", ".join(f"{lane.name}: {'/'.join(lane.kinds)}" for lane in worker.lanes)
        await worker.run(stop, ready=lambda: print(f"stt-worker ready: {worker.id} ({stt.model}; {lanes}) on "
                                                   f"{redact_url(url)}", flush=True))

    try:
        asyncio.run(main())
    except (*_TRANSIENT, nats.js.errors.Error) as exc:
        print(f"stt-worker: NATS at {redact_url(url)}: {exc!r}", flush=True)
        return 1
    finally:
        close = getattr(stt, "close", None)
        if close is not None:
            close()
    log.info("stt-worker %s stopped after %d decodes", worker.id, worker.decodes)
    return 0
