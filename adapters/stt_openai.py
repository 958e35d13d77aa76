"""Speech-to-text through any OpenAI-compatible `/v1/audio/transcriptions` endpoint (the `openai` package).

Implements `pipeline.transcript.SpeechToText`. Called from the scheduler's worker threads, so it uses the blocking
client. Provider exceptions are translated here into `SttError` codes; the API key is never logged.
"""

from __future__ import annotations

import io
import logging
import math
import time
import wave

import numpy as np

from domain.events import Word
from pipeline.guards import apply_guards, compression_ratio, hint_only
from pipeline.transcript import SAMPLE_RATE, SttError, Transcript, as_float_audio
from pipeline.vocabulary import hint_text

log = logging.getLogger(__name__)

# The API's `prompt` is Whisper's: only its last 224 tokens count (about 4 characters a token in English). The
# vocabulary's hint goes first and takes at most MAX_HINT_CHARS, the conversation's text the rest of
# MAX_PROMPT_CHARS, so the hint is never the part cut off.
MAX_PROMPT_CHARS = 800
MAX_HINT_CHARS = 500


def prompt_with(prompt: str | None, vocabulary: tuple[str, ...]) -> str | None:
    """The `prompt` parameter: the hint of the longest front of `vocabulary` within `MAX_HINT_CHARS`, then the
    end of `prompt` (whole words) within what is left of `MAX_PROMPT_CHARS`."""
    n = len(vocabulary)
    while n and len(hint_text(vocabulary[:n])) > MAX_HINT_CHARS:
        n -= 1
    hint = hint_text(vocabulary[:n])
    tail = " ".join((prompt or "").split())
    room = MAX_PROMPT_CHARS - len(hint) - 1
    if len(tail) > room:
        tail = tail[len(tail) - room:]
        tail = tail.split(" ", 1)[1] if " " in tail else ""
    return " ".join(p for p in (hint, tail) if p) or None


def wav_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono int16 WAV of `audio` (int16 or float32)."""
    x = as_float_audio(audio)  # validates
    pcm = (
        audio.astype("<i2")
        if audio.dtype == np.int16
        else np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


class OpenAITranscriber:
    """`audio.transcriptions.create` against `base_url` (None = api.openai.com) with `model`.

    Asks for `verbose_json` with word and segment timestamps (decode statistics feed our guards); servers that
    only answer plain `json` (e.g. gpt-4o-transcribe) are detected on the first 400 and used without them.
    """

    engine = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str = "whisper-1",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 1,
        language: str = "en",
    ) -> None:
        import openai

        self.model = model
        self.language = language
        self._verbose = True
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=max_retries
        )

    def close(self) -> None:
        self._client.close()

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None,
                   vocabulary: tuple[str, ...] = ()) -> Transcript:
        """One request; with `vocabulary` (the interview's terms) their hint leads the `prompt` parameter, and a
        text that is nothing but those terms is asked for again without them (nothing, if that finds nothing)."""
        tr = self._transcribe(audio, prompt_with(prompt, vocabulary))
        if vocabulary and tr.text and hint_only(tr.text, vocabulary):
            plain = self._transcribe(audio, prompt_with(prompt, ()))
            log.debug("only hint terms (%d words); without the vocabulary: %d words", len(tr.text.split()),
                      len(plain.text.split()))
            if not plain.text:
                plain.reason = "hint_only"
            tr = plain
            tr.redecoded = True
        return tr

    def _transcribe(self, audio: np.ndarray, prompt: str | None) -> Transcript:
        data = wav_bytes(audio)
        audio_s = (len(data) - 44) / 2 / SAMPLE_RATE
        t0 = time.perf_counter()
        try:
            result = self._create(data, prompt)
        except self._openai.BadRequestError as exc:
            if not self._verbose:
                raise SttError("stt_bad_request", _describe(exc)) from exc
            log.info("%s rejected verbose_json (%s); using plain json", self.model, _describe(exc))
            self._verbose = False
            try:
                result = self._create(data, prompt)
            except self._openai.OpenAIError as exc2:
                raise _translate(self._openai, exc2) from exc2
        except self._openai.OpenAIError as exc:
            raise _translate(self._openai, exc) from exc
        return apply_guards(self._to_transcript(result, audio_s, time.perf_counter() - t0))

    def _create(self, data: bytes, prompt: str | None) -> object:
        kwargs: dict[str, object] = {
            "file": ("utterance.wav", data, "audio/wav"),
            "model": self.model,
            "language": self.language,
            "temperature": 0.0,
        }
        if prompt:
            kwargs["prompt"] = prompt
        if self._verbose:
            kwargs["response_format"] = "verbose_json"
            kwargs["timestamp_granularities"] = ["word", "segment"]
        return self._client.audio.transcriptions.create(**kwargs)  # type: ignore[call-overload]

    def _to_transcript(self, r: object, audio_s: float, decode_s: float) -> Transcript:
        text = str(getattr(r, "text", "") or "").strip()
        segments = list(getattr(r, "segments", None) or [])
        if segments:
            weights = [max(1, len(s.tokens or [])) for s in segments]
            avg_logprob = sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True)) / sum(
                weights
            )
            no_speech = max(s.no_speech_prob for s in segments)
            ratio = max(s.compression_ratio for s in segments)
            confidence = math.exp(avg_logprob)
        else:  # plain json: no decode statistics; the text-only guards still apply
            avg_logprob, no_speech, ratio, confidence = 0.0, 0.0, 0.0, 1.0
        words = [
            Word(
                w.word.strip(), float(w.start), float(w.end), confidence
            )  # the API gives no per-word probability
            for w in (getattr(r, "words", None) or [])
            if w.word.strip()
        ]
        language = str(getattr(r, "language", None) or self.language)
        return Transcript(
            text=text,
            words=words,
            confidence=confidence,
            no_speech_prob=no_speech,
            language="en" if language == "english" else language,
            avg_logprob=avg_logprob,
            compression_ratio=max(ratio, compression_ratio(text)),
            audio_s=audio_s,
            decode_s=decode_s,
        )


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    msg = getattr(exc, "message", None) or str(exc)
    return f"HTTP {status}: {msg}" if status else msg


def _translate(openai: object, exc: Exception) -> SttError:
    """Map the provider's exceptions onto our error codes (the stream emits them as `error` events)."""
    o = openai
    if isinstance(exc, o.APITimeoutError):  # type: ignore[attr-defined]
        return SttError("stt_timeout", "speech-to-text request timed out")
    if isinstance(exc, o.APIConnectionError):  # type: ignore[attr-defined]
        return SttError("stt_unavailable", f"cannot reach speech-to-text server: {exc}")
    if isinstance(exc, o.AuthenticationError | o.PermissionDeniedError):  # type: ignore[attr-defined]
        return SttError("stt_auth", _describe(exc))
    if isinstance(exc, o.RateLimitError):  # type: ignore[attr-defined]
        return SttError("stt_rate_limited", _describe(exc))
    return SttError("stt_failed", _describe(exc))
