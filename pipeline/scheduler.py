"""The speech-to-text scheduler: one per process, a small bounded pool of worker threads shared by every
participant stream.

Finals always go before partials; partials are shed (the caller gets `None`) when finals are waiting, when a newer
partial of the same stream arrives, or when the partial queue is full. Revisions (a final decoded again with the
conversation around it) run only on capacity the live work leaves, or beside it when the engine revises in a
lowest-priority process of its own. The engine (`pipeline.transcript.SpeechToText`) is blocking and runs in the
worker threads; the scheduler reads time only through its `clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.transcript import SAMPLE_RATE, SpeechToText, SttError, SttOverloaded, Transcript, as_float_audio

log = logging.getLogger(__name__)


class _BusyWindow:
    """Worker time spent on some kind of job over the last `window_s` seconds (running jobs count so far)."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        self.spans: deque[tuple[float, float]] = deque()  # (start, end) of finished jobs
        self.running: dict[int, float] = {}  # key -> start

    def start(self, key: int) -> None:
        self.running[key] = self.clock()

    def end(self, key: int) -> None:
        self.spans.append((self.running.pop(key), self.clock()))

    def share(self, workers: int) -> float:
        now = self.clock()
        horizon = now - self.window_s
        while self.spans and self.spans[0][1] < horizon:
            self.spans.popleft()
        used = sum(end - max(start, horizon) for start, end in self.spans)
        used += sum(now - max(start, horizon) for start in self.running.values())
        return used / (self.window_s * workers)


@dataclass(slots=True)
class _Job:
    audio: np.ndarray
    prompt: str | None
    partial: bool  # queued and shed as a partial
    future: asyncio.Future[Transcript | None]
    key: object | None
    queued_at: float
    final_quality: bool = False  # decode as a final (beam, word timestamps) even though queued as a partial
    context: np.ndarray | None = None  # a revision: decode after this audio, whose text is `context_text`
    context_text: str = ""
    after: np.ndarray | None = None
    vocabulary: tuple[str, ...] = ()  # the interview's terms (pipeline.vocabulary); engines get it only when set

    @property
    def kind(self) -> str:
        if self.context is not None:
            return "revision"
        return "speculative" if self.final_quality else "partial" if self.partial else "final"


JOB_KINDS = ("final", "speculative", "partial", "revision")


@dataclass(slots=True)
class SchedulerStats:
    finals_done: int = 0
    partials_done: int = 0
    partials_shed: int = 0
    finals_rejected: int = 0
    errors: int = 0
    audio_s: float = 0.0
    redecodes: int = 0  # decodes the engine ran twice (a prompted result that stopped short of its audio)
    revisions_done: int = 0
    revisions_dropped: int = 0  # revisions pushed out of a full queue or left when the scheduler closed
    finals_hurried: int = 0  # finals decoded greedily because other finals waited behind them (`hurry`)
    # worker seconds and decodes by kind: "final", "speculative" (a final-quality decode started in a pause),
    # "partial" — where the speech-to-text capacity goes
    busy_by_kind: dict[str, float] = field(default_factory=lambda: dict.fromkeys(JOB_KINDS, 0.0))
    jobs_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOB_KINDS, 0))

    @property
    def busy_s(self) -> float:
        return sum(self.busy_by_kind.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "finals_done": self.finals_done,
            "partials_done": self.partials_done,
            "partials_shed": self.partials_shed,
            "finals_rejected": self.finals_rejected,
            "revisions_done": self.revisions_done,
            "revisions_dropped": self.revisions_dropped,
            "finals_hurried": self.finals_hurried,
            "errors": self.errors,
            "busy_s": round(self.busy_s, 3),
            "audio_s": round(self.audio_s, 3),
        }


class SttScheduler:
    """Runs `stt.transcribe` on a bounded thread pool; finals first, partials shed under load.

    * finals: FIFO, at most `max_pending` waiting; beyond that `transcribe_final` raises `SttOverloaded`
      (the stream reports it as an `error` event — a final is never dropped silently).
    * partials: at most `max_partials` waiting, at most one per `key` (a newer one replaces the older, which
      resolves to None); a partial only starts when no final is waiting; one older than `partial_max_age_s`
      when a worker frees up is shed (its audio has grown since).
    * revisions (a final decoded again with the conversation as context, `transcribe_revision`): FIFO, at most
      `max_revisions` waiting (a new one pushes the oldest out: it resolves to None); one starts only when
      nothing else waits, with several workers it leaves a worker free for finals, and only while the live work
      (finals, speculative finals, partials) used less than `revision_max_load` of the workers' time over the
      last `LOAD_WINDOW_S` — so under load they are what gives way, and the live finals keep their latency.
    * `hurry`: a final that starts while other finals wait behind it is decoded greedily (the engine's
      `transcribe(hurry=True)`, beam 1 instead of the final beam): under a backlog each final costs less and the
      queue drains; with no backlog nothing changes.

    `clock` (seconds, monotonic) times the queued jobs, the load windows and the busy seconds in `stats`; tests
    pass one they move by hand.
    """

    PARTIAL_WINDOW_S = 5.0
    LOAD_WINDOW_S = 10.0

    def __init__(
        self,
        stt: SpeechToText,
        *,
        workers: int = 1,
        max_pending: int = 64,
        max_partials: int = 4,
        partial_max_age_s: float = 1.0,
        partial_share: float = 0.15,
        max_revisions: int = 32,
        revision_max_load: float = 0.4,
        hurry: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.stt = stt
        self.workers = workers
        self.max_pending = max_pending
        self.max_partials = max_partials
        self.partial_max_age_s = partial_max_age_s
        self.stats = SchedulerStats()
        self._clock = clock
        self._finals: deque[_Job] = deque()
        self._partials: deque[_Job] = deque()
        self._revisions: deque[_Job] = deque()
        self.max_revisions = max_revisions
        self.revision_max_load = revision_max_load
        self._live_busy = _BusyWindow(self.LOAD_WINDOW_S, clock)  # finals, speculative finals and partials
        # an engine whose revisions run in a process of their own at the lowest CPU priority (WhisperProcesses):
        # they get a worker of their own here, and the operating system decides what is spare
        self._apart = bool(getattr(stt, "revises_apart", False))
        self._revision_wakeup: asyncio.Event | None = None
        self._revision_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-revision")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stt")
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self._best_effort = 0  # partial/speculative decodes running now
        self._revising = 0  # revisions running now
        self.partial_share = partial_share
        self._partial_busy = _BusyWindow(self.PARTIAL_WINDOW_S, clock)  # plain partials
        self._closed = False
        self._partial_kw = _accepts(stt, "partial")
        self._kind_kw = _accepts(stt, "kind")  # an engine that queues by kind (NatsWhisper): told it
        self.hurry = hurry and _accepts(stt, "hurry")

    @property
    def queue_depth(self) -> int:
        return len(self._finals) + len(self._partials) + len(self._revisions)

    @property
    def revises(self) -> bool:
        """Whether the engine can decode a final again with context (`transcribe_revision`)."""
        return callable(getattr(self.stt, "revise", None))

    @property
    def finals_waiting(self) -> int:
        return len(self._finals)

    @property
    def busy(self) -> int:
        return self._running

    @property
    def spare(self) -> bool:
        """Whether a speculative final (final-quality decode of a pause) may start now without delaying a final.

        No final waits, a worker is free, and best-effort work (running or queued) stays below `workers - 1`
        (one worker is always kept for finals) or, with one worker, that worker is idle. Best-effort work asked
        for without spare capacity is shed at once: under load it gives way to finals.
        """
        if self._finals or self._running >= self.workers:
            return False
        # a revision running on a live worker counts too: the other worker stays free for finals
        return self._best_effort + self._revising + len(self._partials) < max(1, self.workers - 1)

    @property
    def idle_workers(self) -> int:
        """Workers with nothing running and nothing queued for them (finals and best-effort work; revisions in a
        process of their own at nice 19 do not count): the CPU left beside the live decodes."""
        return max(0, self.workers - self._running - len(self._finals) - len(self._partials))

    @property
    def partial_ok(self) -> bool:
        """Whether a plain partial may start now: `spare`, no final running (on a CPU-bound machine a partial
        beside a final slows the final), and partials used less than `partial_share` of the workers' time
        over the last `PARTIAL_WINDOW_S` (partials are cosmetic; they must not eat the capacity finals need)."""
        if not self.spare or self._running > self._best_effort + self._revising:
            return False
        return self.partial_load() < self.partial_share

    def partial_load(self) -> float:
        """Share of worker time spent on plain partials over the last `PARTIAL_WINDOW_S` (running ones count)."""
        return self._partial_busy.share(self.workers)

    def live_load(self) -> float:
        """Share of worker time spent on live work (everything but revisions) over the last `LOAD_WINDOW_S`."""
        return self._live_busy.share(self.workers)

    def _start(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._tasks = [
                asyncio.create_task(self._worker(i), name=f"stt-worker-{i}") for i in range(self.workers)
            ]
            if self._apart:
                self._revision_wakeup = asyncio.Event()
                self._tasks.append(asyncio.create_task(self._revision_worker(), name="stt-revisions"))

    async def transcribe_final(self, audio: np.ndarray, *, prompt: str | None = None,
                               vocabulary: tuple[str, ...] = ()) -> Transcript:
        if self._closed:
            raise SttError("stt_closed", "speech-to-text scheduler is closed")
        as_float_audio(audio)  # validate at the edge, not in the worker
        if len(self._finals) >= self.max_pending:
            self.stats.finals_rejected += 1
            raise SttOverloaded(f"{len(self._finals)} finals already waiting for speech-to-text")
        self._start()
        fut: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(audio, prompt, False, fut, None, self._clock(), vocabulary=vocabulary))
        # a waiting final makes every queued partial stale work: shed them now rather than after the final
        self._shed_partials(lambda _j: True)
        self._notify()
        result = await fut
        assert result is not None
        return result

    async def transcribe_partial(
        self,
        audio: np.ndarray,
        *,
        prompt: str | None = None,
        key: object | None = None,
        final_quality: bool = False,
        vocabulary: tuple[str, ...] = (),
    ) -> Transcript | None:
        """Best-effort decode with partial priority (None when shed). `key` identifies the stream: a newer
        request with the same key replaces an older one still queued. `final_quality` decodes with the final
        settings (used for the speculative final a stream starts when its speaker pauses)."""
        if self._closed:
            return None
        as_float_audio(audio)
        self._start()
        if key is not None:
            self._shed_partials(lambda j: j.key == key)
        if not (self.spare if final_quality else self.partial_ok) or len(self._partials) >= self.max_partials:
            self.stats.partials_shed += 1
            return None
        fut: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()
        job = _Job(audio, prompt, True, fut, key, self._clock(), final_quality, vocabulary=vocabulary)
        if final_quality:  # a speculative final saves a whole decode after the pause: ahead of plain partials
            self._partials.appendleft(job)
        else:
            self._partials.append(job)
        self._notify()
        return await fut

    async def transcribe_revision(
        self, audio: np.ndarray, *, context: np.ndarray, context_text: str, after: np.ndarray | None = None,
        vocabulary: tuple[str, ...] = (),
    ) -> Transcript | None:
        """Decode a final's audio again after `context` (see `LocalWhisper.revise`) when there is capacity to
        spare. None when it was pushed out of the queue or the scheduler closed before it ran."""
        if not self.revises:
            raise SttError("stt_unsupported", f"{self.stt.engine} cannot revise with context")
        if self._closed:
            return None
        as_float_audio(audio)
        as_float_audio(context)
        if after is not None:
            as_float_audio(after)
        self._start()
        if len(self._revisions) >= self.max_revisions:
            oldest = self._revisions.popleft()
            self.stats.revisions_dropped += 1
            if not oldest.future.done():
                oldest.future.set_result(None)
        fut: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()
        self._revisions.append(_Job(audio, None, False, fut, None, self._clock(), context=context,
                                    context_text=context_text, after=after, vocabulary=vocabulary))  # fmt: skip
        self._notify()
        return await fut

    def _drop_revisions(self) -> None:
        while self._revisions:
            job = self._revisions.popleft()
            if not job.future.done():
                self.stats.revisions_dropped += 1
                job.future.set_result(None)

    def shed(self, key: object) -> None:
        """Drop the queued partials of `key` (their audio is stale)."""
        self._shed_partials(lambda j: j.key == key)

    def _shed_partials(self, pred: Any) -> None:
        keep: deque[_Job] = deque()
        for job in self._partials:
            if pred(job):
                self.stats.partials_shed += 1
                if not job.future.done():
                    job.future.set_result(None)
            else:
                keep.append(job)
        self._partials = keep

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self._revision_wakeup is not None:
            self._revision_wakeup.set()

    def _next_job(self) -> _Job | None:
        if self._finals:
            return self._finals.popleft()
        now = self._clock()
        while self._partials:
            job = self._partials.popleft()
            if job.future.done():
                continue
            if now - job.queued_at > self.partial_max_age_s:
                self.stats.partials_shed += 1
                job.future.set_result(None)
                continue
            return job
        # a revision only on capacity nobody else wants, keeping a worker free for the next final
        if (self._revisions and not self._apart and self._running < max(1, self.workers - 1)
                and self.live_load() < self.revision_max_load):
            while self._revisions:
                job = self._revisions.popleft()
                if not job.future.done():
                    return job
        return None

    async def _worker(self, _i: int) -> None:
        assert self._wakeup is not None
        while True:
            job = self._next_job()
            if job is None:
                if self._closed:
                    return
                self._wakeup.clear()
                if self._revisions:  # held back by the load: look again as it decays
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await self._wakeup.wait()
                else:
                    await self._wakeup.wait()
                continue
            if job.future.done():  # the awaiting task was cancelled
                continue
            await self._run(job, self._executor, live_slot=True)

    async def _revision_worker(self) -> None:
        """With an engine that revises apart (its own lowest-priority process), revisions run here, one at a time,
        beside the live workers: the operating system gives them only the CPU nobody else wants."""
        assert self._revision_wakeup is not None
        while True:
            job = None
            while self._revisions and job is None:
                candidate = self._revisions.popleft()
                if not candidate.future.done():
                    job = candidate
            if job is None:
                if self._closed:
                    return
                self._revision_wakeup.clear()
                await self._revision_wakeup.wait()
                continue
            await self._run(job, self._revision_executor, live_slot=False)

    async def _run(self, job: _Job, executor: ThreadPoolExecutor, *, live_slot: bool) -> None:
        """Decode one job on `executor` and settle its future; `live_slot`: it occupies one of the workers."""
        loop = asyncio.get_running_loop()
        kind = job.kind
        if live_slot:
            self._running += 1
            self._best_effort += job.partial
            self._revising += kind == "revision"
        if kind == "partial":
            self._partial_busy.start(id(job))
        if kind != "revision":
            self._live_busy.start(id(job))
        t0 = self._clock()
        try:
            if job.context is not None:
                call: Any = functools.partial(_revise, self.stt, job.audio, job.context, job.context_text, job.after,
                                              job.vocabulary)
            else:
                kwargs: dict[str, Any] = {"prompt": job.prompt}
                if self._partial_kw:
                    kwargs["partial"] = kind == "partial"
                if self._kind_kw:
                    kwargs["kind"] = kind
                if self.hurry and kind == "final" and any(not j.future.done() for j in self._finals):
                    # others wait behind this one (a cancelled stream's final does not count)
                    kwargs["hurry"] = True
                    self.stats.finals_hurried += 1
                if job.vocabulary:  # engines without a vocabulary (test doubles) never see the argument
                    kwargs["vocabulary"] = job.vocabulary
                call = functools.partial(_call, self.stt, job.audio, kwargs)
            result = await loop.run_in_executor(executor, call)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this worker is being stopped
            # the call itself was cancelled (its executor shut down): the request still gets an outcome
            self.stats.errors += 1
            if not job.future.done():
                job.future.set_exception(SttError("stt_closed", "speech-to-text stopped before this request ran"))
        except Exception as exc:  # one failed request must not stop the worker
            self.stats.errors += 1
            log.warning("speech-to-text failed (%s): %s", kind, exc)
            if not job.future.done():
                job.future.set_exception(
                    exc if isinstance(exc, SttError) else SttError("stt_failed", f"{type(exc).__name__}: {exc}")
                )
        else:
            self.stats.redecodes += int(getattr(result, "redecoded", False))
            if kind == "revision":
                self.stats.revisions_done += 1
            elif job.partial:
                self.stats.partials_done += 1
            else:
                self.stats.finals_done += 1
            self.stats.audio_s += job.audio.size / SAMPLE_RATE
            if isinstance(result, Transcript):
                result.queue_s, result.run_s = t0 - job.queued_at, self._clock() - t0
            if not job.future.done():
                job.future.set_result(result)
        finally:
            if live_slot:
                self._running -= 1
                self._best_effort -= job.partial
                self._revising -= kind == "revision"
            if kind == "partial":
                self._partial_busy.end(id(job))
            if kind != "revision":
                self._live_busy.end(id(job))
            self.stats.busy_by_kind[kind] += self._clock() - t0
            self.stats.jobs_by_kind[kind] += 1

    async def aclose(self) -> None:
        """Finish queued finals, shed queued partials and revisions, stop the workers and the thread pool."""
        self._closed = True
        self._shed_partials(lambda _j: True)
        self._drop_revisions()
        self._notify()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False)
        self._revision_executor.shutdown(wait=False)

    def metrics(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue_depth,
            "finals_waiting": len(self._finals),
            "busy": self._running,
            **self.stats.to_dict(),
        }


def _call(stt: SpeechToText, audio: np.ndarray, kwargs: dict[str, Any]) -> Transcript:
    return stt.transcribe(audio, **kwargs)


def _revise(
    stt: Any, audio: np.ndarray, context: np.ndarray, context_text: str, after: np.ndarray | None,
    vocabulary: tuple[str, ...] = (),
) -> Transcript:
    extra = {"vocabulary": vocabulary} if vocabulary else {}
    result: Transcript = stt.revise(audio, context=context, context_text=context_text, after=after, **extra)
    return result


def _accepts(stt: SpeechToText, keyword: str) -> bool:
    import inspect

    try:
        return keyword in inspect.signature(stt.transcribe).parameters
    except (TypeError, ValueError):
        return False
