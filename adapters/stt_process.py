"""`WhisperProcesses`: `LocalWhisper` in child processes, decoded away from the event loop's interpreter.

Why: a decode is mostly C++ (CTranslate2, which releases the GIL), but faster-whisper wraps it in Python (mel
features, the segment loop, word merging). In the server's process every one of those steps waits for the GIL
that the event loop holds while it handles a thousand RTP packets a second; measured with ten rooms, decodes ran
about twice as slow as alone. A child process has its own interpreter, so the two no longer contend, and a
crash in native code (a bad model file, an out-of-memory kill) costs a re-decode, not the server.

`transcribe` is blocking, like `LocalWhisper.transcribe`: the scheduler calls it from its worker threads, and the
thread waits on the child without holding the GIL. Run as many scheduler workers as there are processes.

`revise` (a final decoded again with the conversation as context, ~1 s of CPU each) runs in one more process with
its own model (`revision_model`: Whisper base by default, see `adapters.stt_engines`), started on the first
revision, at the lowest CPU priority (nice 19): it gets the CPU the live decodes and the event loop leave, so revisions cannot slow the live finals (measured at 10 rooms, sharing the live workers raised final p95
by 250 ms).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from adapters import memory
from adapters.stt_whisper import JoinedBase, LocalWhisper, check_model_dir, model_name
from pipeline.transcript import SttError, Transcript, as_float_audio

log = logging.getLogger(__name__)

STT_TRIM_IDLE_S = 1.0  # a worker this long without a request trims: longer than the gap between a room's decodes
_child_stt: LocalWhisper | None = None
_child_idle: memory.IdleTrim | None = None


def _init_child(model_path: str | None, options: dict[str, Any], nice: int = 0, arenas: int = 0,
                trim_idle_s: float | None = None) -> None:
    global _child_stt, _child_idle
    memory.limit_arenas(arenas)  # before CTranslate2 starts its threads
    if trim_idle_s:
        _child_idle = memory.IdleTrim(trim_idle_s)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # absolute: also under a server started with a negative nice
    # Ctrl-C reaches the whole process group and a service manager may signal it too: the parent drains the
    # streams to their finals on shutdown and then stops this pool itself, so the workers must outlive the signal.
    # The parent kills them (SIGKILL) when it replaces a broken pool, and they exit on their own if it dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    _child_stt = LocalWhisper(model_path, **options)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)  # the server is gone (killed): nobody will read our results


def _child_call(method: str, audio: np.ndarray, kwargs: dict[str, Any]) -> Transcript:
    assert _child_stt is not None, "worker process started without a model"
    try:
        if _child_idle is None:
            result: Transcript = getattr(_child_stt, method)(audio, **kwargs)
        else:
            with _child_idle.working():
                result = getattr(_child_stt, method)(audio, **kwargs)
        return result
    except Exception as exc:
        # an exception that cannot be rebuilt in the parent (a custom constructor) would break the whole pool;
        # a RuntimeError with the original type and message always can
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None


def _child_memory() -> dict[str, Any]:
    """This worker's pid, RSS, glibc heap and trims so far (for tests and diagnostics)."""
    return {"pid": os.getpid(), "rss_mb": memory.rss_mb(), "heap_mb": memory.heap(),
            "trims": _child_idle.trims if _child_idle is not None else None}


def _child_ready() -> tuple[int, str]:
    assert _child_stt is not None
    time.sleep(0.2)  # hold this worker so that the next warm-up call starts (and loads) another one
    return os.getpid(), _child_stt.model


class WhisperProcesses:
    """`processes` child processes, each with its own `LocalWhisper(model_path, cpu_threads=..., ...)`.

    The models load at construction (a bad model path raises `ValueError` here, not on the first utterance).
    `malloc_arenas` caps each child's glibc arenas (`adapters.memory.limit_arenas`; 0: glibc's default) and
    `trim_idle_s` makes it hand its free heap back to the kernel once it has had no request for that long (None:
    never): a decode's buffers grow with its window, and glibc keeps what a 30 s window freed (README "Soak").
    A child that dies breaks the pool: it is replaced and the requests in flight are decoded once more on the new
    one; a request whose decode kills its worker twice fails with `SttError("stt_crashed")`.
    """

    engine = LocalWhisper.engine
    revises_apart = True  # SttScheduler: revisions have their own process, at the lowest priority
    REVISION_NICE = 19

    def __init__(self, model_path: str | None = None, *, processes: int = 2, cpu_threads: int = 1,
                 revision_model: str | JoinedBase | None = None, malloc_arenas: int = 2,
                 trim_idle_s: float | None = STT_TRIM_IDLE_S, **options: Any) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        if malloc_arenas < 0:
            raise ValueError(f"malloc_arenas must be >= 0, not {malloc_arenas}")
        if trim_idle_s is not None and trim_idle_s <= 0:
            raise ValueError(f"trim_idle_s must be > 0 or None, not {trim_idle_s}")
        self._memory = (malloc_arenas, trim_idle_s)
        check_model_dir(model_path)  # the usual start-up error, raised here rather than inside a child
        self.processes = processes
        self._args = (model_path, {"cpu_threads": cpu_threads, **options})
        # the revision process loads only the model it decodes with (a bigger one: it runs at the lowest priority)
        if isinstance(revision_model, str):
            check_model_dir(revision_model)
        self._revision_model = revision_model or model_path
        self.revision_model = (revision_model.name if isinstance(revision_model, JoinedBase)
                               else model_name(revision_model or model_path))
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self._pool = self._start()
        self._revision_pool: ProcessPoolExecutor | None = None  # started on the first revision
        self.model = self._warm_up()

    def _start(self, *, revisions: bool = False) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs threads (asyncio, CTranslate2) that a fork would copy mid-state
        return ProcessPoolExecutor(1 if revisions else self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_child,
                                   initargs=(self._revision_path() if revisions else self._args[0], self._args[1],
                                             self.REVISION_NICE if revisions else 0, *self._memory))

    def _revision_path(self) -> str | None:
        model = self._revision_model
        return model.path() if isinstance(model, JoinedBase) else model  # joined on the first revision

    def _warm_up(self) -> str:
        t0 = time.perf_counter()
        try:
            ready = [f.result() for f in [self._pool.submit(_child_ready) for _ in range(self.processes)]]
        except BrokenProcessPool as exc:  # the child logged why
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise ValueError(f"speech-to-text worker process failed to start: {exc}") from exc
        log.info("speech-to-text: %d worker process(es) %s ready in %.2fs", len({p for p, _ in ready}),
                 sorted({p for p, _ in ready}), time.perf_counter() - t0)
        return ready[0][1]

    @property
    def pids(self) -> list[int]:
        return sorted(getattr(self._pool, "_processes", None) or {})

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False,
                   vocabulary: tuple[str, ...] = (), hurry: bool = False) -> Transcript:
        as_float_audio(audio)  # validate here: a bad array is the caller's error, not a crash
        return self._call("transcribe", audio, {"prompt": prompt, "partial": partial, "vocabulary": vocabulary,
                                                "hurry": hurry})

    def revise(self, audio: np.ndarray, *, context: np.ndarray, context_text: str,
               after: np.ndarray | None = None, vocabulary: tuple[str, ...] = ()) -> Transcript:
        """`LocalWhisper.revise` in a worker process."""
        as_float_audio(audio)
        as_float_audio(context)
        if after is not None:
            as_float_audio(after)
        return self._call("revise", audio, {"context": context, "context_text": context_text, "after": after,
                                            "vocabulary": vocabulary})

    def worker_memory(self) -> dict[str, Any]:
        """`{"pid", "rss_mb", "heap_mb", "trims"}` of one live-decode worker process (whichever is free)."""
        return self._pool.submit(_child_memory).result()

    @property
    def revision_pid(self) -> int | None:
        pool = self._revision_pool
        return next(iter(getattr(pool, "_processes", None) or {}), None) if pool is not None else None

    def _call(self, method: str, audio: np.ndarray, kwargs: dict[str, Any]) -> Transcript:
        revisions = method == "revise"
        for attempt in (1, 2):
            with self._lock:
                if self._closed:
                    raise SttError("stt_closed", "speech-to-text worker processes are shut down")
                if revisions and self._revision_pool is None:
                    self._revision_pool = self._start(revisions=True)
                pool = self._revision_pool if revisions else self._pool
            assert pool is not None  # started above, or in __init__
            try:
                fut: Future[Transcript] = pool.submit(_child_call, method, audio, kwargs)
            except BrokenProcessPool:  # broken before this request reached it: use the new pool
                self._restart(pool)
                continue
            except RuntimeError as exc:  # submit after shutdown: close() raced us
                raise SttError("stt_closed", str(exc)) from exc
            try:
                return fut.result()
            except BrokenProcessPool as exc:
                # a dead worker fails every request in flight, also those on healthy siblings: decode once more
                # on a new pool, so one crash costs time, not finals (an input that kills the decoder fails twice)
                self._restart(pool)
                if attempt == 2:
                    raise SttError("stt_crashed", f"speech-to-text worker process died: {exc}") from exc
                log.warning("speech-to-text worker process died during a request; decoding it again")
            except CancelledError as exc:  # close() cancelled it before it ran
                raise SttError("stt_closed", "speech-to-text worker processes shut down") from exc
        raise SttError("stt_crashed", "speech-to-text worker processes keep dying")

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._closed or broken not in (self._pool, self._revision_pool):
                return  # another thread already replaced it
            log.error("speech-to-text worker process died; starting a new pool")
            # the survivors ignore SIGTERM (see _init_child), which is what the executor sends them: kill them, or
            # they finish their work for nobody while the new pool loads its models
            for proc in list((getattr(broken, "_processes", None) or {}).values()):
                with contextlib.suppress(OSError, ValueError):
                    proc.kill()
            broken.shutdown(wait=False, cancel_futures=True)
            if broken is self._revision_pool:
                self._revision_pool = self._start(revisions=True)
            else:
                self._pool = self._start()
            self.restarts += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools = [p for p in (self._pool, self._revision_pool) if p is not None]
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
