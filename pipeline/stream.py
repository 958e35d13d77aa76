"""One participant's live pipeline: PCM frames in, stream events out.

    push(pcm) ─► FrontEnd (DSP, inline: cheap) ─► utterances ─► SttScheduler (threads) ─► guards
              └► level meter (throttled)        └► partial re-decodes of the utterance in progress
    final transcript ─► SegmentEvent(final) ─► SentimentTracker / KeywordTracker ─► SentimentEvent, KeywordsEvent
                     └► Conversation (shared by a room's streams: prompt, revision context, cross-talk guard)
    later, on spare CPU: final + turns before it (forced text) + next turn ─► revision ─► SegmentEvent(revised)
                     ─► SentimentTracker.revise / KeywordTracker.remove+update ─► SentimentEvent, KeywordsEvent

Contract with the consumer (`emit`, a sync callback run on the event loop):

* every utterance the segmenter closes ends as exactly one `segment.final` or one `error` event (before it, at most
  one `error` with `affected["retrying"]`: speech-to-text is unavailable, the audio is kept and asked for again), except
  utterances the guards judge to be silence/noise for which nothing was shown (no partial): those emit
  nothing, so silence and noise produce no segments (their seq is skipped; `stats["noise_utterances"]`);
* `seq` is per stream, starts at 0, increases with every utterance; partials carry the seq their final will have,
  and a final with empty text retracts partials shown for an utterance that turned out to be noise;
* finals of one stream are emitted in seq order;
* segments flagged as hallucinations are emitted (marked) but never reach the analysers;
* a `segment.revised` (same seq, after its final) replaces that final's text when a decode with the conversation
  around it is different and no less probable (for short utterances and numbers: clearly more probable, and the
  same digits); at most one such per final; never for a hallucination-flagged
  final nor for one marked `crosstalk`;
* cross-talk: a final that repeats the words of another stream's overlapping, louder final (this microphone heard
  the other participant) is emitted with `crosstalk=True` and never reaches the analysers, the prompt or a
  revision's context. When the louder final comes out second, the one already emitted is corrected: a
  `segment.revised` with `crosstalk=True`, the text it last had and the next revision number (after a text
  revision: 2); its words leave the keyword counts and its sentiment the smoothing (no new `sentiment` event:
  consumers drop that seq's point). A text revision is compared again: its new words can show it (then the
  revision itself carries `crosstalk=True`) or another stream's final to be a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from domain.events import (
    ErrorEvent,
    KeywordsEvent,
    LevelEvent,
    SegmentEvent,
    SentimentEvent,
    Speaker,
    StreamEvent,
    Word,
)
from pipeline.analysis import KeywordTracker, SentimentTracker
from pipeline.bleed import BLEED_ONLY_DB, MAX_DELAY_S, suppress_bleed
from pipeline.guards import (
    Heard,
    bleed_of,
    cut_short,
    normalise,
    speech_level_db,
    spoken_digits,
    trim_after_speech,
    word_confidence,
    words_besides_numbers,
    words_of,
)
from pipeline.scheduler import SttScheduler
from pipeline.smart_turn import SmartTurn
from pipeline.transcript import SAMPLE_RATE, SttError, Transcript
from pipeline.turns import TurnRule, Verdict, audio_verdict, combine, text_verdict

log = logging.getLogger(__name__)

# engine errors that pass: the final is kept and asked for again (pipeline.transcript.SttError codes)
RETRYABLE = frozenset({"stt_unavailable"})


@dataclass
class StreamConfig:
    vad: str = "hybrid"
    partial_interval_s: float = (
        1.0  # re-decode the utterance in progress at most this often (0 = no partials)
    )
    partial_min_s: float = 0.5  # first partial once this much audio (pre-roll included) is in
    partial_retry_s: float = 0.25  # a first partial without words is tried again this much later
    # the interval is at least this fraction of the utterance so far: a partial re-decodes the whole utterance,
    # so a fixed interval makes partial cost grow with the square of the utterance length
    partial_interval_growth: float = 0.25
    end_silence_ms: int = 500
    # semantic end of turn (pipeline.turns): the speculative decode of a pause decides how long it may last
    # before the utterance closes: `turn_complete_ms` after a complete sentence or question,
    # `turn_incomplete_ms` after a trailing "and"/"um"/comma, else `end_silence_ms`
    semantic_turns: bool = True
    turn_complete_ms: int = 220
    turn_incomplete_ms: int = 800
    # with an audio model (ParticipantStream's `turn_audio`): its P(turn ended) at the pause must be at least
    # `turn_audio_end` to close early, and below `turn_audio_hold` it waits `turn_incomplete_ms` (pipeline.turns)
    turn_audio_end: float = 0.3
    turn_audio_hold: float = 0.0
    pre_roll_ms: int = 300
    min_speech_ms: int = 200
    max_utterance_s: float = 20.0
    frame_ms: int = 20
    skills: tuple[str, ...] = ()
    emit_levels_every_s: float = 0.1  # 0 = no level events
    top_keywords: int = 10
    speculative_final: bool = (
        True  # decode when the speaker pauses; reuse it as the final if speech does not resume
    )
    # the pause that starts the speculative decode: raw VAD silence (no hangover), well below turn_complete_ms so
    # that the decode (and the audio model's answer) is in when a complete sentence may close. Earlier costs more
    # wasted decodes (pauses that turn out to be a breath), but speculation only runs on spare capacity.
    speculate_after_ms: int = 80
    # prompt the decoder with this stream's recent confident finals (the conversation so far, bounded): per-utterance
    # decoding without it is well behind whole-file decoding, which conditions on the previous text
    prompt_previous: bool = True
    prompt_min_confidence: float = 0.6
    prompt_max_chars: int = 200
    # after a final is out, decode it again after up to `revise_context_s` of the conversation's preceding
    # speech, with its text forced as the prefix (whole-file decoding's context, at whole-file cost), and send a
    # `segment.revised` when the text changes; runs only on spare speech-to-text capacity
    revise: bool = True
    revise_context_s: float = 25.0
    # a revision also hears the conversation's next turn (decoded, then dropped): it waits this long for it (wall
    # clock; None: until the next turn or the end of the stream, for a file fed with `settle()`)
    revise_wait_s: float | None = 8.0
    # the context is forced on the decoder: it stops at a final less confident than this (a looser bar than the
    # prompt's: the context's audio is heard too, and a wrong word there costs less than no context)
    revise_min_confidence: float = 0.4
    # a revision replaces the final only if its words are at least this much more probable (geometric mean)
    revise_min_gain: float = 0.0
    # ... and for a short utterance (at most `revise_strict_max_words` words) or one mostly of numbers (at least
    # `revise_strict_number_share` of its words, live or revised), only if they are `revise_strict_min_gain` more
    # probable and say the same digits: the context is text and speech around the utterance, which cannot tell
    # which digits were said (a revision of spoken digits inserted a "0" and dropped an "oh"), and a short
    # utterance is mostly context in the revision's window
    revise_strict_max_words: int = 3
    revise_strict_number_share: float = 0.5
    revise_strict_min_gain: float = 0.1
    # a final gets no revision while this many of its conversation's are still pending (the CPU is behind)
    revise_max_pending: int = 8
    # aclose(drain=True) waits for the stream's revisions (a file's transcript); False: they are cancelled (a
    # participant leaving or a server shutting down does not wait for improvements; the finals are out)
    await_revisions: bool = True
    # mark finals that repeat another stream's overlapping, louder final (pipeline.guards.bleed_of)
    crosstalk_guard: bool = True
    # before each decode, subtract the delayed, quieter copy of the conversation's other streams this microphone
    # picked up (pipeline.bleed; the other streams' audio is the reference)
    bleed_suppression: bool = True
    # a final no engine can take now (`stt_unavailable`: every speech-to-text worker gone) is kept and asked for
    # again this often, for up to `final_retry_for_s` (`final_retry_closing_s` once the stream is closing)
    final_retry_s: float = 2.0
    final_retry_for_s: float = 300.0
    final_retry_closing_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


class ParticipantStream:
    def __init__(
        self,
        speaker: Speaker,
        scheduler: SttScheduler,
        emit: Callable[[StreamEvent], None],
        *,
        in_rate: int = 48000,
        channels: int = 2,
        config: StreamConfig | None = None,
        clock: Callable[[], float] | None = None,
        conversation: Conversation | None = None,
        turn_audio: SmartTurn | None = None,
        vocabulary: tuple[str, ...] | None = None,
    ) -> None:
        from pipeline.dsp import FrontEnd  # the native core; imported here so a missing build names the fix

        self.speaker = speaker
        self.scheduler = scheduler
        self.config = cfg = config or StreamConfig()
        self._emit_cb = emit
        self._clock = clock
        self.in_rate = in_rate
        self.channels = channels
        self.frontend = FrontEnd(
            in_rate=in_rate,
            channels=channels,
            vad=cfg.vad,
            frame_ms=cfg.frame_ms,
            pre_roll_ms=cfg.pre_roll_ms,
            end_silence_ms=cfg.end_silence_ms,
            min_speech_ms=cfg.min_speech_ms,
            max_utterance_s=cfg.max_utterance_s,
        )
        self.turn_rule = TurnRule(cfg.end_silence_ms, cfg.turn_complete_ms, cfg.turn_incomplete_ms,
                                  audio_end=cfg.turn_audio_end, audio_hold=cfg.turn_audio_hold)
        # the audio end-of-turn model (pipeline.smart_turn), shared by the process's streams, on its own thread. Its
        # answer changes the silence only when the pause's words read complete, or (`turn_audio_hold` > 0) when it
        # says incomplete. When the speech-to-text workers have a spare one besides the pause's decode and the model
        # is idle (`_maybe_speculate`), it is asked beside the decode, so that both answers are in by
        # `turn_complete_ms`: asked after the decode, the inference (50-150 ms on this shared CPU) came after it,
        # and the early close almost never made it. Under load it is asked only once the decode reads complete and
        # speech has not resumed (pauses that end first, and words that decide alone, cost no inference). With a
        # hold it is always asked beside the decode, for every pause.
        self.turn_audio = turn_audio if cfg.semantic_turns else None
        self._turn_audio_first = self.turn_rule.audio_hold > 0
        self._turn_p: asyncio.Task[float] | None = None  # its answer for the pause of `self._spec`
        self._spec_audio: np.ndarray | None = None  # what the audio model hears for that pause
        # (speculative decode, silence in ms it lets the pause last): read once per decode
        self._turn_silence: tuple[asyncio.Task[Transcript | None], int] | None = None
        # (seq, speech end sample) of the last utterance closed before `end_silence_ms`: the next one continues it
        # if speech resumed within `end_silence_ms`
        self._early_close: tuple[int, int] | None = None
        self.sentiment = SentimentTracker()
        self.keywords = KeywordTracker(skills=cfg.skills)
        self._next_seq = 0
        self._pending_samples = 0  # audio of closed utterances whose final is not out yet
        self._finals: set[asyncio.Task[None]] = set()
        # seq -> (utterance, monotonic time it closed) for utterances whose outcome (final/error/noise) is not out yet
        self._open: dict[int, tuple[Any, float]] = {}
        self._last_final: asyncio.Task[None] | None = None
        self._partial_task: asyncio.Task[None] | None = None
        # speculative final: (seq, utterance start sample, samples covered, task) started when the speaker paused
        self._spec: tuple[int, int, int, asyncio.Task[Transcript | None]] | None = None
        self._spec_shown: asyncio.Task[Transcript | None] | None = None  # the decode last shown as a partial
        # (seq, speech end) of the pause last speculated on: one decode per pause
        self._spec_mark: tuple[int, int | None] | None = None
        self._partial_shown: set[int] = set()
        self._last_partial_at = -1e9  # stream time (s) of the last partial request
        self._next_level_at = 0.0
        # the text that prompts each decode: this stream's own confident finals, or, when streams of one room
        # share a Conversation, every participant's (a candidate's answer decodes with the question before it)
        self.conversation = conversation or Conversation(cfg.prompt_max_chars,
                                                         prompt_min_confidence=cfg.prompt_min_confidence)
        # the interview's terms every decode is told (pipeline.vocabulary); None: the conversation's (a room's)
        self._vocabulary = vocabulary
        self._revisions: dict[asyncio.Task[None], _Turn] = {}  # running or waiting, with the turn they revise
        # stream time (s) -> the conversation's time axis, which the cross-talk guard compares finals on (None:
        # no longer known). The streams of a file share their time; a room's owner maps each to arrival time.
        self.conversation_time: Callable[[float], float | None] = _same_time
        self._closed = False
        self._closed_at: float | None = None
        self.stats: dict[str, int] = {
            "utterances": 0, "finals": 0, "partials": 0, "partials_shed": 0, "noise_utterances": 0,
            "hallucinations": 0, "errors": 0, "speculative_used": 0, "speculative_wasted": 0,
            "revisions": 0, "revisions_unchanged": 0, "revisions_rejected": 0, "revisions_dropped": 0,
            "revisions_failed": 0, "revisions_unfollowed": 0, "crosstalk": 0, "crosstalk_corrected": 0,
            "turns_closed_early": 0, "turns_held": 0, "turns_continued": 0, "finals_retried": 0,
            "turn_audio_queries": 0, "turn_audio_beside": 0, "turn_audio_failed": 0, "bleed_suppressed": 0, "bleed_only": 0,
        }  # fmt: skip
        self.conversation.join(self)

    # ------------------------------------------------------------------------------------------ properties

    @property
    def lag_s(self) -> float:
        """Seconds of closed-utterance audio whose final transcript has not been emitted yet."""
        return self._pending_samples / SAMPLE_RATE

    @property
    def final_wait_s(self) -> float:
        """How long the oldest closed utterance without an outcome has waited for it (0 when none waits).

        Unlike `lag_s`, which jumps to an utterance's length when it closes, this grows only while speech-to-text
        keeps a final waiting, so a backlog shows as a rising value."""
        if not self._open:
            return 0.0
        return time.monotonic() - min(closed for _, closed in self._open.values())

    @property
    def stream_time_s(self) -> float:
        return self.frontend.samples_in / SAMPLE_RATE

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The interview's terms this stream's decodes are told: its own, else its conversation's."""
        return self._vocabulary if self._vocabulary is not None else self.conversation.vocabulary

    # ------------------------------------------------------------------------------------------- data path

    def push(self, pcm: np.ndarray) -> None:
        """Feed one chunk of interleaved int16 PCM (any length). Runs on the event loop; never blocks on STT."""
        if self._closed:
            raise ValueError("push() after aclose()")
        self._set_end_silence()
        utterances = self.frontend.push(pcm)
        for utt in utterances:
            self._submit_final(utt)
        self._maybe_level()
        self._show_speculation()
        self._maybe_speculate()
        self._maybe_partial()

    async def settle(self) -> None:
        """Wait until every utterance closed so far has its outcome and every revision that can run has run (left:
        revisions waiting for a next turn). A file is fed faster than real time; settling after each push makes
        what each decode is prompted with (the finals before it, revised or not) and what each revision hears after
        it depend on the stream position only, not on how fast the machine decodes."""
        while True:
            busy = [*self._finals, *(t for t, turn in self._revisions.items() if turn.followed.is_set())]
            if not busy:
                return
            await asyncio.wait(busy)

    async def aclose(self, drain: bool = True) -> None:
        """End of stream: close the open utterance; with `drain`, wait until every final is out."""
        if self._closed:
            return
        self._closed = True
        self._closed_at = time.monotonic()
        for utt in self.frontend.flush():
            self._submit_final(utt)
        if self._spec is not None:
            self._spec[3].cancel()
            self._spec = None
        self._cancel_turn_audio()
        if self._partial_task is not None:
            self._partial_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._partial_task
        if not drain:
            for task in list(self._finals):
                task.cancel()
        if self._finals:
            await asyncio.gather(*list(self._finals), return_exceptions=True)
        if not (drain and self.config.await_revisions):
            for task in list(self._revisions):
                task.cancel()
        for turn in self.conversation.turns:  # this stream's turns: revise them without waiting for a next one
            if turn.owner == id(self):
                turn.followed.set()
        if self._revisions:
            await asyncio.gather(*list(self._revisions), return_exceptions=True)
        for seq, (utt, _closed) in sorted(self._open.items()):  # cancelled (drain=False): still one outcome each
            self.stats["errors"] += 1
            affected = {"seq": seq, "start_s": round(utt.start_s, 3), "end_s": round(utt.end_s, 3)}
            self._emit(
                ErrorEvent(self.speaker, "stream_closed", "stream closed before transcription", affected)
            )
        self._open.clear()
        self._pending_samples = 0
        # A closed stream is no cross-talk source or copy any more, and keeps nothing of its owner: without these
        # the conversation and the owner's time mapping would hold it (and its room) until a full collection.
        self.conversation.sent = deque(f for f in self.conversation.sent if f.stream is not self)
        self.conversation.leave(self)
        self.conversation_time = _same_time

    # ------------------------------------------------------------------------------------------- internals

    def _emit(self, event: StreamEvent) -> None:
        if self._clock is not None and hasattr(event, "emitted_at_s"):
            event.emitted_at_s = self._clock()
        try:
            self._emit_cb(event)
        except Exception:  # a failing consumer must not kill the stream
            log.exception("event consumer failed on %s", getattr(event, "type", type(event).__name__))

    def _maybe_level(self) -> None:
        every = self.config.emit_levels_every_s
        if every <= 0:
            return
        t = self.stream_time_s
        if t >= self._next_level_at:
            lvl = self.frontend.level
            self._next_level_at = t + every
            self._emit(
                LevelEvent(self.speaker, lvl.rms_dbfs, lvl.peak_dbfs, lvl.clipped, self.frontend.speaking, t)
            )

    def _maybe_speculate(self) -> None:
        """When the speaker pauses mid-utterance (``speculate_after_ms`` of raw VAD silence), decode what we have
        at final quality. If the segmenter then closes the utterance without new speech, that decode is the
        final: latency becomes max(end silence, pause trigger + decode) instead of end silence + decode.
        If speech resumes, the decode is shown as a partial instead (no plain partial runs while it is pending)."""
        cfg = self.config
        fe = self.frontend
        if not (cfg.speculative_final and fe.in_progress):
            return
        if fe.trailing_silence_samples < cfg.speculate_after_ms * SAMPLE_RATE // 1000:
            return
        mark = (self._next_seq, fe.speech_end)
        if mark == self._spec_mark:  # this pause has its decode already
            return
        if not self.scheduler.spare:  # finals first; retried on the next push while the pause lasts
            return
        got = fe.partial_audio()
        if got is None or got[1].size < cfg.partial_min_s * SAMPLE_RATE:
            return
        self._spec_mark = mark
        start, audio = got
        covered = audio.size
        refs = self._references(start, audio.size)
        # decode the audio the final will hold if speech does not resume: the snapshot, then silence up to where
        # the segmenter will close the utterance (same length, so the same encoder window and the same text
        # as decoding the closed utterance; the dialogues' pauses are digital silence and decode identically)
        silence = cfg.end_silence_ms * SAMPLE_RATE // 1000
        frames = -(-silence // fe.frame_len)  # the segmenter closes on the first frame that completes it
        closes_at = (mark[1] or start) - start + frames * fe.frame_len
        if self._spec is not None:  # the previous pause's decode: speech went on after it
            self.stats["speculative_wasted"] += 1
            self._spec[3].cancel()
        self.scheduler.shed(id(self))  # a queued plain partial of this stream is stale now
        seq = self._next_seq
        # a worker besides this decode's, and the audio model idle: the CPU has room for its inference now
        beside = self.turn_audio is not None and (
            self._turn_audio_first or (self.turn_audio.pending == 0 and self.scheduler.idle_workers >= 2))
        task = asyncio.create_task(self._speculate(seq, start, audio, closes_at, refs, self._prompt()))
        task.add_done_callback(_consume_outcome)
        task.add_done_callback(lambda _t: self._show_speculation())
        task.add_done_callback(lambda _t: self._set_end_silence())
        self._spec = (seq, start, covered, task)
        self._cancel_turn_audio()
        self._spec_audio = got[1]  # the same snapshot, as it stands now: speech and the pause so far
        if beside:
            self.stats["turn_audio_beside"] += 1
            self._ask_turn_audio()

    def _ask_turn_audio(self) -> None:
        if self.turn_audio is None or self._spec_audio is None:
            return
        self.stats["turn_audio_queries"] += 1
        self._turn_p = asyncio.create_task(self.turn_audio.end_probability(self._spec_audio))
        self._turn_p.add_done_callback(_consume_outcome)
        self._turn_p.add_done_callback(lambda _t: self._set_end_silence())

    async def _speculate(self, seq: int, start: int, audio: np.ndarray, closes_at: int,
                         refs: list[tuple[np.ndarray, int]], prompt: str | None) -> Transcript | None:
        """The speculative decode of the snapshot `audio` (without bleed), padded with silence to `closes_at`
        samples; None when it holds only another participant's voice (the final finds that out again)."""
        cleaned = await self._without_bleed(start, audio, refs)
        if cleaned is None:
            return None
        if closes_at > cleaned.size:
            cleaned = np.concatenate([cleaned, np.zeros(closes_at - cleaned.size, np.int16)])
        return await self.scheduler.transcribe_partial(cleaned, prompt=prompt, key=(id(self), "spec", seq),
                                                       final_quality=True, vocabulary=self.vocabulary)

    def _cancel_turn_audio(self) -> None:
        """The audio model's query for a pause that is over: skipped if it has not started."""
        if self._turn_p is not None and not self._turn_p.done():
            self._turn_p.cancel()
        self._turn_p = None

    def _set_end_silence(self) -> None:
        """The silence that closes the utterance in progress: from the speculative decode of the current pause when
        it is done and speech has not resumed since (pipeline.turns), with the audio model's answer for the pause
        too when there is a model (until it is in: `end_silence_ms`), else `end_silence_ms`."""
        cfg = self.config
        if not cfg.semantic_turns or self._closed:
            return
        ms = cfg.end_silence_ms
        spec, fe = self._spec, self.frontend
        if spec is not None and spec[0] == self._next_seq and spec[3].done() and fe.in_progress:
            seq, start, covered, task = spec
            speech_end = fe.speech_end
            turn_p = self._turn_p
            if speech_end is not None and speech_end <= start + covered:  # the pause decoded
                if self._turn_silence is None or self._turn_silence[0] is not task:
                    tr = None if task.cancelled() or task.exception() is not None else task.result()
                    verdict: Verdict = "unsure"
                    if tr is not None and tr.text and not tr.hallucination:
                        verdict = text_verdict(tr.text, tr.words[-1].probability if tr.words else None,
                                               min_probability=self.turn_rule.min_probability)
                    # the audio can change the verdict only for complete words (or, with a hold, unsure ones)
                    heeded = verdict == "complete" or (verdict == "unsure" and self.turn_rule.audio_hold > 0)
                    if self.turn_audio is not None and heeded and (turn_p is None or not turn_p.done()):
                        if turn_p is None:
                            self._ask_turn_audio()  # the words would close early: the audio must agree
                        fe.end_silence_samples = ms * SAMPLE_RATE // 1000  # meanwhile, the fixed silence
                        return
                    if not heeded and turn_p is not None and not turn_p.done():
                        self._cancel_turn_audio()  # asked beside the decode, not needed: skipped if not started
                    if self.turn_audio is not None:  # no answer (failed, or never asked): the audio is unsure
                        verdict = combine(verdict, audio_verdict(self._turn_p_value(), end=self.turn_rule.audio_end,
                                                                 hold=self.turn_rule.audio_hold))
                    self._turn_silence = (task, self.turn_rule.end_silence_ms(verdict))
                ms = self._turn_silence[1]
        fe.end_silence_samples = ms * SAMPLE_RATE // 1000

    def _turn_p_value(self) -> float | None:
        task = self._turn_p
        if task is None or not task.done() or task.cancelled():
            return None
        if task.exception() is not None:
            self.stats["turn_audio_failed"] += 1
            log.warning("smart turn failed: %s", task.exception())
            return None
        return task.result()

    def _show_speculation(self) -> None:
        """Speech resumed after a pause whose speculative decode is done: show that decode as a partial."""
        spec = self._spec
        if spec is None or spec[0] != self._next_seq or not spec[3].done() or spec[3] is self._spec_shown:
            return
        seq, start, covered, task = spec
        speech_end = self.frontend.speech_end
        if self._closed or speech_end is None or speech_end <= start + covered:
            return  # still pausing: the final is about to take it as is
        self._spec_shown = task
        tr = None if task.cancelled() or task.exception() is not None else task.result()
        if tr is None or not tr.text or tr.hallucination:
            return
        self.stats["partials"] += 1
        self._partial_shown.add(seq)
        self._last_partial_at = self.stream_time_s
        self._emit(self._segment(seq, start, start + covered, tr, final=False))

    def _take_speculative(self, seq: int, utt: Any) -> asyncio.Task[Transcript | None] | None:
        spec, self._spec = self._spec, None
        if spec is None or spec[0] != seq:
            if spec is not None:
                spec[3].cancel()
            return None
        _, start, covered, task = spec
        speech_end = int(round(utt.speech_end_s * SAMPLE_RATE))
        # reusable only for the same audio up to trailing silence: same start, no speech after the snapshot, and
        # the utterance holds the whole snapshot (a max-length cut may end it earlier)
        if start != utt.start or speech_end > start + covered or utt.end < start + covered:
            task.cancel()
            self.stats["speculative_wasted"] += 1
            return None
        return task

    def _maybe_partial(self) -> None:
        cfg = self.config
        if cfg.partial_interval_s <= 0 or not self.frontend.in_progress or not self.frontend.speaking:
            return
        if self._partial_task is not None and not self._partial_task.done():
            return
        if self._spec is not None and self._spec[0] == self._next_seq and not self._spec[3].done():
            return  # the speculative decode of the last pause shows up as a partial if speech went on
        t = self.stream_time_s
        utt_start = self.frontend.utterance_start or 0
        so_far_s = (self.frontend.samples_in - utt_start) / SAMPLE_RATE
        if t - self._last_partial_at < max(cfg.partial_interval_s, cfg.partial_interval_growth * so_far_s):
            return
        if not self.scheduler.partial_ok:  # finals first: retried on the next push, when a worker may be free
            return
        got = self.frontend.partial_audio()
        if got is None:
            return
        start, audio = got
        if audio.size < cfg.partial_min_s * SAMPLE_RATE:
            return
        self._last_partial_at = t
        self._partial_task = asyncio.create_task(self._partial(self._next_seq, start, audio,
                                                               self._references(start, audio.size)))

    async def _partial(self, seq: int, start: int, audio: np.ndarray, refs: list[tuple[np.ndarray, int]]) -> None:
        cleaned = await self._without_bleed(start, audio, refs)
        if cleaned is None:  # another participant's voice only
            return
        audio = cleaned
        try:
            tr = await self.scheduler.transcribe_partial(audio, prompt=self._prompt(), key=id(self),
                                                         vocabulary=self.vocabulary)
        except SttError as exc:
            log.debug("partial failed: %s", exc)  # the final reports errors; partials are best effort
            return
        if tr is None:
            self.stats["partials_shed"] += 1
            if seq == self._next_seq and seq not in self._partial_shown:
                self._retry_partial_soon()  # shed while other streams got the worker: no first partial yet
            return
        log.debug("partial of %s seq %d at %.2f s: %.2f s of audio -> %d words (%s)", self.speaker.participant_id,
                  seq, self.stream_time_s, audio.size / SAMPLE_RATE, len(tr.text.split()), tr.reason)
        if seq == self._next_seq and (not tr.text or tr.hallucination) and seq not in self._partial_shown:
            # too little speech yet for words (nothing, or "I... I... I..."): try again `partial_retry_s` after
            # this attempt rather than a whole interval later (onset -> first partial)
            self._retry_partial_soon()
        # the utterance may have closed meanwhile: its final owns the seq now
        if seq != self._next_seq or not tr.text or tr.hallucination:
            return
        self.stats["partials"] += 1
        self._partial_shown.add(seq)
        self._emit(self._segment(seq, start, start + audio.size, tr, final=False))

    def _retry_partial_soon(self) -> None:
        """The next partial may come `partial_retry_s` from now rather than a whole interval later."""
        cfg = self.config
        self._last_partial_at = self.stream_time_s - max(0.0, cfg.partial_interval_s - cfg.partial_retry_s)

    def _references(self, start: int, n: int) -> list[tuple[np.ndarray, int]]:
        """The other streams' audio around `n` samples of this one from stream sample `start`
        (`Conversation.references`), taken now, on the event loop; none when bleed suppression is off."""
        if not self.config.bleed_suppression:
            return []
        t0 = self.conversation_time(start / SAMPLE_RATE)
        return [] if t0 is None else self.conversation.references(self, t0, n)

    async def _without_bleed(self, start: int, audio: np.ndarray,
                             refs: list[tuple[np.ndarray, int]]) -> np.ndarray | None:
        """`audio` (16 kHz, from stream sample `start`) without the other streams' voices this microphone picked
        up (`pipeline.bleed`, against `refs`, in a worker thread): what every decode hears. None when nothing but
        their voices was there (its active level fell by `BLEED_ONLY_DB`): no decode, whose words would be made
        of the residue."""
        if not refs:
            return audio
        try:
            cleaned, found = await asyncio.to_thread(_without_bleed, audio, refs)
        except Exception:  # noqa: BLE001 - a failed suppression leaves the audio as it was; the final still comes
            log.exception("bleed suppression failed")
            return audio
        for f in found:
            self.stats["bleed_suppressed"] += 1
            log.debug("%s: bleed removed from %.2f s (%d ms later, %.1f dB, peak z %.0f)",
                      self.speaker.participant_id, start / SAMPLE_RATE, round(f.delay_s * 1000), f.gain_db,
                      f.peak_z)  # fmt: skip
        return cleaned

    def _submit_final(self, utt: Any) -> None:
        t0 = self.conversation_time(utt.start_s)
        if t0 is not None:
            self.conversation.hear(self, t0, utt.audio)
        refs = self._references(utt.start, utt.audio.size)
        seq = self._next_seq
        self._next_seq += 1
        self.stats["utterances"] += 1
        self._cancel_turn_audio()  # an answer for a pause that closed the utterance comes too late to matter
        fixed = self.config.end_silence_ms * SAMPLE_RATE // 1000
        speech_end = int(round(utt.speech_end_s * SAMPLE_RATE))
        continues = None
        if self._early_close is not None:
            prev_seq, prev_end = self._early_close
            if int(round(utt.speech_start_s * SAMPLE_RATE)) - prev_end < fixed:  # the fixed rule would have joined
                continues = prev_seq
                self.stats["turns_continued"] += 1
        closing = utt.end - speech_end  # the silence that closed it (the end of the stream: whatever was left)
        self._early_close = (seq, speech_end) if 0 <= closing < fixed and not self._closed else None
        if self.config.semantic_turns and not self._closed and closing != fixed:
            self.stats["turns_closed_early" if closing < fixed else "turns_held"] += 1
        self._pending_samples += utt.end - utt.start
        self._open[seq] = (utt, time.monotonic())
        timing = {"close": 1000 * closing / SAMPLE_RATE}
        if self._clock is not None:  # the audio's arrival against the stream's clock: > 0 when it came in late
            timing["ingest"] = 1000 * (self._clock() - self.stream_time_s)
        task = asyncio.create_task(self._final(seq, utt, self._last_final, self._take_speculative(seq, utt),
                                               continues, timing, refs))  # fmt: skip
        self._last_final = task
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    async def _transcribe_final(self, utt: Any, affected: dict[str, Any]) -> Transcript:
        """The final's decode. While no engine can take it (`stt_unavailable`) the utterance is kept and asked for
        again every `final_retry_s`, after one `error` event that says so (`affected["retrying"]`), so the final
        still comes out once workers are back: no hole in the transcript. Gives up (raises) after
        `final_retry_for_s`, or `final_retry_closing_s` into the stream's close."""
        cfg = self.config
        give_up: float | None = None
        while True:
            try:
                return await self.scheduler.transcribe_final(utt.audio, prompt=self._prompt(),
                                                             vocabulary=self.vocabulary)
            except SttError as exc:
                if exc.code not in RETRYABLE:
                    raise
                now = time.monotonic()
                if give_up is None:
                    give_up = now + cfg.final_retry_for_s
                    self.stats["finals_retried"] += 1
                    self._emit(ErrorEvent(self.speaker, exc.code, f"{exc.message} (kept; asking again)",
                                          {**affected, "retrying": True}))
                if self._closed:
                    give_up = min(give_up, (self._closed_at or now) + cfg.final_retry_closing_s)
                if now + cfg.final_retry_s > give_up:
                    raise
                await asyncio.sleep(cfg.final_retry_s)  # the engine's workers come back on their own schedule

    async def _final(
        self,
        seq: int,
        utt: Any,
        previous: asyncio.Task[None] | None,
        spec: asyncio.Task[Transcript | None] | None,
        continues: int | None = None,
        timing: dict[str, float] | None = None,
        refs: list[tuple[np.ndarray, int]] | None = None,
    ) -> None:
        affected = {"seq": seq, "start_s": round(utt.start_s, 3), "end_s": round(utt.end_s, 3)}
        tr: Transcript | None = None
        error: ErrorEvent | None = None
        timing = {} if timing is None else timing  # ms, see domain.events.FINAL_TIMING
        closed = mark = time.monotonic()

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.monotonic()
            timing[stage] = 1000 * (now - mark)
            mark = now

        try:
            cleaned = await self._without_bleed(utt.start, utt.audio, refs or [])
            only_bleed = cleaned is None
            utt = replace(utt, audio=np.zeros_like(utt.audio) if cleaned is None else cleaned)
            lap("bleed")
            if previous is not None:  # in order, and so the prompt is the previous final's text
                await _wait_quietly(previous)
            lap("previous")
            timing["speculative"] = 0
            if only_bleed:  # another participant's voice only, taken out (`_without_bleed`): nothing to decode
                if spec is not None:
                    spec.cancel()
                spec = None
                self.stats["bleed_only"] += 1
                tr = Transcript("", reason="bleed only")
            if spec is not None:
                tr = await _result_or_none(spec)
                self.stats["speculative_used" if tr is not None else "speculative_wasted"] += 1
                lap("speculative_wait")
                timing["speculative"] = int(tr is not None)
            if tr is None:
                tr = await self._transcribe_final(utt, affected)
                timing["queue"], timing["decode"] = 1000 * tr.queue_s, 1000 * tr.run_s
                mark = time.monotonic()
        except SttError as exc:
            error = ErrorEvent(self.speaker, exc.code, exc.message, affected)
        except Exception as exc:  # noqa: BLE001 - any failure becomes an error event, never a lost final
            log.exception("final transcription failed")
            error = ErrorEvent(self.speaker, "stt_failed", f"{type(exc).__name__}: {exc}", affected)
        finally:
            self._pending_samples -= utt.end - utt.start
            if error is not None:
                self._open.pop(seq, None)
                self.stats["errors"] += 1
                self._partial_shown.discard(seq)
                self._emit(error)
        if tr is None:
            return
        self._open.pop(seq, None)
        tr = trim_after_speech(tr, utt.speech_end_s - utt.start_s)
        shown = seq in self._partial_shown
        self._partial_shown.discard(seq)
        if not tr.text and not shown:
            self.stats["noise_utterances"] += 1
            log.debug("utterance %d of %s dropped as %s", seq, self.speaker.participant_id, tr.reason)
            return
        self.stats["finals"] += 1
        seg = self._segment(seq, utt.start, utt.end, tr, final=True, speech_end_s=utt.speech_end_s)
        seg.continues = continues
        sent = self._sent_final(seq, utt, seg, source=not tr.hallucination) if tr.text else None
        if sent is not None:
            seg.crosstalk = self.conversation.check_crosstalk(sent)  # may correct another stream's final first
            sent.segment = replace(seg)  # as sent (the consumer may renumber the one it gets)
        lap("post")
        timing["server"] = 1000 * (mark - closed)
        timing["at"] = mark  # this host's monotonic clock (s): a receiver on the same host measures delivery
        seg.timing = timing
        self._emit(seg)
        self.stats["hallucinations"] += int(tr.hallucination)
        if seg.crosstalk:
            self.stats["crosstalk"] += 1
            log.debug("final %d of %s is cross-talk", seq, self.speaker.participant_id)
            return
        if not tr.text or tr.hallucination:
            return
        # a low-confidence final is kept out of the prompt and the context: never condition on text we doubt
        turn = self.conversation.add(tr.text, utt.audio, confidence=tr.confidence, word_confidence=word_confidence(tr),
                                     owner=id(self))
        if sent is not None:
            sent.turn = turn
        score, rolling = self.sentiment.update(tr.text, seq)
        self._emit(SentimentEvent(self.speaker, seq, score, rolling, seg.start_s, seg.end_s))
        self.keywords.update(tr.text, seq)
        self._emit(KeywordsEvent(self.speaker, self.keywords.top(self.config.top_keywords), seq))
        if self.config.revise and self.scheduler.revises:
            if self.conversation.revisions_pending >= self.config.revise_max_pending:
                self.stats["revisions_dropped"] += 1  # the CPU is not keeping up with them: the final stands
                self.scheduler.stats.revisions_dropped += 1  # the metric counts every revision never decoded
                return
            # `seg` itself is not kept: the consumer may renumber it (a resumed participant's seq offset)
            task = asyncio.create_task(
                self._revise(seq, (seg.start_s, seg.end_s), utt, turn, self.conversation.last_revision, sent)
            )
            self.conversation.last_revision = task
            self.conversation.revisions_pending += 1
            self._revisions[task] = turn
            task.add_done_callback(self._revision_done)

    def _prompt(self) -> str | None:
        return self.conversation.prompt if self.config.prompt_previous else None

    def _sent_final(self, seq: int, utt: Any, seg: SegmentEvent, *, source: bool) -> SentFinal | None:
        """The final as the cross-talk guard compares it: speech span on the conversation's time axis, words and
        speech level (None when the guard is off or the span's conversation time is no longer known)."""
        if not self.config.crosstalk_guard:
            return None
        start, end = self.conversation_time(utt.speech_start_s), self.conversation_time(utt.speech_end_s)
        if start is None or end is None:
            return None
        i0 = int(round((utt.speech_start_s - utt.start_s) * SAMPLE_RATE))
        i1 = int(round((utt.speech_end_s - utt.start_s) * SAMPLE_RATE))
        level = speech_level_db(utt.audio[i0:i1]) if i1 > i0 else None
        return SentFinal(Heard.of(seg.text, start, end, level), self, seq, seg, source=source)

    def correct_crosstalk(self, sent: SentFinal) -> None:
        """A final this stream already emitted repeats a louder final of another stream that came out after it:
        send it again marked `crosstalk` (the next revision, its last text), and take it out of the analysers,
        the prompt and the revisions' context (a revision of it still to come is called off)."""
        self.stats["crosstalk"] += 1
        self.stats["crosstalk_corrected"] += 1
        seg = replace(sent.segment, crosstalk=True, revision=sent.segment.revision + 1, emitted_at_s=None,
                      timing=None)
        sent.segment = replace(seg)
        log.debug("final %d of %s corrected as cross-talk", sent.seq, self.speaker.participant_id)
        self._emit(seg)
        if sent.turn is None:
            return
        self.conversation.remove(sent.turn)
        self.sentiment.remove(sent.seq)
        self.keywords.remove(sent.turn.text, sent.seq)
        self._emit(KeywordsEvent(self.speaker, self.keywords.top(self.config.top_keywords), sent.seq))

    def _revision_done(self, task: asyncio.Task[None]) -> None:
        self._revisions.pop(task, None)
        self.conversation.revisions_pending -= 1
        if self.conversation.last_revision is task:
            # A finished task keeps its exception's traceback, whose frames hold this stream: kept in the room's
            # conversation it would make a cycle that keeps the stream, its participant and room after they close.
            self.conversation.last_revision = None
        if not task.cancelled() and task.exception() is not None:
            log.error("revision failed", exc_info=task.exception())

    async def _revise(
        self, seq: int, span: tuple[float, float], utt: Any, turn: _Turn, previous: asyncio.Task[None] | None,
        sent: SentFinal | None,
    ) -> None:
        """Decode a final again with the conversation before it as context; send `segment.revised` if the text
        changed. Revisions of one conversation run in order, so each one's context holds the revised text of the
        ones before. Best effort: dropped under load, and a failure leaves the final as it was."""
        if turn.next is None:  # what was said next helps as much as what was said before
            try:
                async with asyncio.timeout(self.config.revise_wait_s):
                    await turn.followed.wait()
            except TimeoutError:
                self.stats["revisions_unfollowed"] += 1
        if previous is not None:
            await _wait_quietly(previous)
        context, context_text = self.conversation.context_before(turn, self.config.revise_context_s,
                                                                 self.config.revise_min_confidence)
        if not context_text:
            return  # nothing before it: decoding it again would only repeat the final
        after = None
        if turn.next is not None:
            room = int(WINDOW_S * SAMPLE_RATE) - context.size - turn.audio.size - int(Conversation.GAP_S * SAMPLE_RATE)
            if room > SAMPLE_RATE // 2:
                after = np.concatenate([np.zeros(int(Conversation.GAP_S * SAMPLE_RATE), np.int16),
                                        turn.next.audio[:room]])  # fmt: skip
        try:
            tr = await self.scheduler.transcribe_revision(utt.audio, context=context, context_text=context_text,
                                                          after=after, vocabulary=self.vocabulary)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the final stands; a revision is an improvement, not a duty
            log.warning("revision of %s/%d failed: %s", self.speaker.participant_id, seq, exc)
            self.stats["revisions_failed"] += 1
            return
        if tr is None:
            self.stats["revisions_dropped"] += 1
            return
        if turn.removed:  # marked cross-talk meanwhile: it stays as it was sent
            return
        tr = trim_after_speech(tr, utt.speech_end_s - utt.start_s)
        if not tr.text or tr.hallucination or cut_short(tr, tr.audio_s):
            log.debug("revision of %d rejected (%s)", seq, tr.reason or "cut short")
            self.stats["revisions_rejected"] += 1
            return
        if normalise(tr.text) == normalise(turn.text):
            turn.confidence = max(turn.confidence, tr.confidence)
            self.stats["revisions_unchanged"] += 1
            return
        confidence = word_confidence(tr)
        cfg = self.config
        (live_digits, live_share), (new_digits, new_share) = spoken_digits(turn.text), spoken_digits(tr.text)
        if (len(turn.text.split()) <= cfg.revise_strict_max_words
                or max(live_share, new_share) >= cfg.revise_strict_number_share):
            numeric = max(live_share, new_share) >= cfg.revise_strict_number_share
            if (confidence < turn.word_confidence + cfg.revise_strict_min_gain or new_digits != live_digits
                    or (numeric and words_besides_numbers(tr.text) != words_besides_numbers(turn.text))):
                # (the digits themselves are not logged: a phone number is personal data)
                log.debug("revision of short or numeric %d not clearly better (%.3f vs %.3f, digits %s)", seq,
                          confidence, turn.word_confidence, "differ" if new_digits != live_digits else "same")
                self.stats["revisions_rejected"] += 1
                return
        if confidence < turn.word_confidence + cfg.revise_min_gain:
            # the decoder is less sure of the revised words than of the live ones: keep the final. Measured on 8
            # dialogues (20 revisions): taking every revision made 6 utterances worse; this rule, 4 (for 12 better)
            log.debug("revision of %d less confident (%.3f < %.3f)", seq, confidence, turn.word_confidence)
            self.stats["revisions_rejected"] += 1
            return
        old, turn.text, turn.confidence, turn.word_confidence = turn.text, tr.text, tr.confidence, confidence
        self.stats["revisions"] += 1
        seg = self._segment(seq, utt.start, utt.end, tr, final=True, speech_end_s=utt.speech_end_s)
        seg.revision = 1
        seg.start_s, seg.end_s = span  # the same utterance: only its words changed
        if sent is not None:
            # the new words may show it (or another stream's final) to be a copy that the live words hid
            sent.heard = replace(sent.heard, words=words_of(tr.text))
            seg.crosstalk = self.conversation.check_crosstalk(sent)
            sent.segment = replace(seg)
        self._emit(seg)
        if seg.crosstalk:
            self.stats["crosstalk"] += 1
            self.conversation.remove(turn)
            self.sentiment.remove(seq)
            self.keywords.remove(old, seq)
            self._emit(KeywordsEvent(self.speaker, self.keywords.top(self.config.top_keywords), seq))
            return
        revised = self.sentiment.revise(seq, tr.text)
        if revised is not None:
            self._emit(SentimentEvent(self.speaker, seq, revised[0], revised[1], seg.start_s, seg.end_s))
        self.keywords.remove(old, seq)
        self.keywords.update(tr.text, seq)
        self._emit(KeywordsEvent(self.speaker, self.keywords.top(self.config.top_keywords), seq))

    def _segment(
        self,
        seq: int,
        start: int,
        end: int,
        tr: Transcript,
        *,
        final: bool,
        speech_end_s: float | None = None,
    ) -> SegmentEvent:
        t0 = start / SAMPLE_RATE
        t1 = end / SAMPLE_RATE
        words = [Word(w.word, t0 + w.start_s, min(t1, t0 + w.end_s), w.probability) for w in tr.words]
        seg_start = max(t0, words[0].start_s) if words else t0
        # finals end where the segmenter saw speech end (latency = emitted_at_s - end_s); partials at the audio so far
        seg_end = speech_end_s if speech_end_s is not None else t1
        stt = self.scheduler.stt
        return SegmentEvent(
            speaker=self.speaker,
            seq=seq,
            start_s=seg_start,
            end_s=max(seg_start, seg_end),
            text=tr.text,
            final=final,
            words=words,
            confidence=tr.confidence,
            no_speech_prob=tr.no_speech_prob,
            language=tr.language,
            engine=stt.engine,
            model=stt.model,
            hallucination=tr.hallucination,
        )


@dataclass(slots=True, eq=False)
class _Turn:
    text: str
    audio: np.ndarray  # int16, 16 kHz: the utterance as it was decoded
    confidence: float
    word_confidence: float = 0.0  # geometric mean of its words' probabilities (pipeline.guards.word_confidence)
    owner: int = 0  # id() of the stream it came from
    next: _Turn | None = None  # the turn that came out after it
    followed: asyncio.Event = field(default_factory=asyncio.Event)  # set when `next` is, or nothing will come
    removed: bool = False  # taken out of the conversation (cross-talk): no revision, no context


@dataclass(slots=True, eq=False)
class SentFinal:
    """A final with text as the cross-talk guard remembers it: what it heard, whose it is and, to correct it,
    the segment as last sent and its conversation turn (None when it was marked at once or is no turn). A
    hallucination-flagged final can be found to be a copy but is no `source`: its words prove nothing."""

    heard: Heard
    stream: ParticipantStream
    seq: int
    segment: SegmentEvent
    turn: _Turn | None = None
    crosstalk: bool = False
    source: bool = True


class Conversation:
    """The recent finals of one conversation (every stream of a room, or of a stereo file), in the order they
    came out, with their audio.

    * `prompt`: the trusted finals' text, the last `max_chars` characters cut at a word boundary — what the
      next live decode of any stream is prompted with (whole-file decoding conditions on the previous text).
    * `context_before(turn, seconds)`: the trusted finals before `turn`, audio and text, for its revision.
    * `vocabulary`: the interview's terms, told to every decode of its streams (`pipeline.vocabulary`).
    * `check_crosstalk(final)`: whether a final repeats an overlapping louder final of another stream (and the
      correction of earlier finals of other streams it shows to be copies); finals marked cross-talk never
      become turns.
    Keeps the turns of the last `keep_s` seconds of speech, and the finals of the last `CROSSTALK_KEEP_S` seconds
    of conversation time for the cross-talk guard.
    """

    GAP_S = 0.3  # silence between turns in a revision's context
    # a final is compared with the others' finals that ended at most this long before it started: a copy overlaps
    # its source, and a final comes out at most a few seconds after its utterance closed
    CROSSTALK_KEEP_S = 30.0

    def __init__(self, max_chars: int = 200, *, prompt_min_confidence: float = 0.6, keep_s: float = 60.0,
                 vocabulary: tuple[str, ...] = ()) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        # the interview's terms (pipeline.vocabulary): told to every decode of its streams before the prompt
        self.vocabulary = vocabulary
        self.max_chars = max_chars
        self.prompt_min_confidence = prompt_min_confidence
        self.keep_s = keep_s
        self.turns: deque[_Turn] = deque()
        self._kept = 0  # samples of audio in `turns`
        self.last_revision: asyncio.Task[None] | None = None  # revisions run in conversation order
        self.revisions_pending = 0  # started and not finished (waiting for the next turn, their turn, or the CPU)
        self.sent: deque[SentFinal] = deque()  # recent finals with text of every stream, for the cross-talk guard
        # the streams and, per stream, its closed utterances' audio as heard (conversation time of the first
        # sample, int16 16 kHz) of the last CROSSTALK_KEEP_S: the references for bleed suppression
        self.streams: list[ParticipantStream] = []
        self._heard: dict[int, deque[tuple[float, np.ndarray]]] = {}

    def add(self, text: str, audio: np.ndarray | None = None, *, confidence: float = 1.0,
            word_confidence: float = 0.0, owner: int = 0) -> _Turn:
        turn = _Turn(text, audio if audio is not None else np.zeros(0, np.int16), confidence, word_confidence, owner)
        if self.turns:
            self.turns[-1].next = turn
            self.turns[-1].followed.set()
        self.turns.append(turn)
        self._kept += turn.audio.size
        while len(self.turns) > 1 and self._kept > self.keep_s * SAMPLE_RATE:
            self._kept -= self.turns.popleft().audio.size
        return turn

    def remove(self, turn: _Turn) -> None:
        """Take `turn` out (a final found to be cross-talk): out of the prompt and every revision's context."""
        turn.removed = True
        turn.followed.set()  # its revision, if waiting for a next turn, ends now
        try:
            i = self.turns.index(turn)
        except ValueError:
            return  # fell out of the window
        if i > 0:
            self.turns[i - 1].next = turn.next
        del self.turns[i]
        self._kept -= turn.audio.size

    def join(self, stream: ParticipantStream) -> None:
        self.streams.append(stream)
        self._heard[id(stream)] = deque()

    def leave(self, stream: ParticipantStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
        self._heard.pop(id(stream), None)

    def hear(self, stream: ParticipantStream, t0: float, audio: np.ndarray) -> None:
        """Remember a closed utterance of `stream` (its audio as the microphone gave it, starting at conversation
        time `t0`) as a reference for the other streams' bleed suppression."""
        heard = self._heard.get(id(stream))
        if heard is None:
            return
        heard.append((t0, audio))
        while heard and heard[0][0] + heard[0][1].size / SAMPLE_RATE < t0 - self.CROSSTALK_KEEP_S:
            heard.popleft()

    def references(self, stream: ParticipantStream, t0: float, n: int) -> list[tuple[np.ndarray, int]]:
        """Each other stream's audio around `n` samples of `stream` from conversation time `t0`: (its audio from
        `MAX_DELAY_S` before `t0` to the end of the span, zeros where it heard nothing, that lead in samples),
        for the streams that heard something there. Their closed utterances and the one in progress."""
        lead = int(round(MAX_DELAY_S * SAMPLE_RATE))
        begin = t0 - lead / SAMPLE_RATE
        refs = []
        for other in self.streams:
            if other is stream:
                continue
            pieces = list(self._heard.get(id(other), ()))
            got = other.frontend.partial_audio() if other.frontend.in_progress else None
            if got is not None:
                t_open = other.conversation_time(got[0] / SAMPLE_RATE)
                if t_open is not None:
                    pieces.append((t_open, got[1]))
            ref = np.zeros(lead + n, np.int16)
            used = False
            for t_piece, audio in pieces:
                at = int(round((t_piece - begin) * SAMPLE_RATE))
                a, b = max(0, at), min(ref.size, at + audio.size)
                if b > a:
                    ref[a:b] = audio[a - at : b - at]
                    used = True
            if used:
                refs.append((ref, lead))
        return refs

    def check_crosstalk(self, final: SentFinal) -> bool:
        """True when `final` (about to be emitted, or its revision) repeats a louder final another stream already
        emitted: emit it marked. Finals of other streams it shows to be copies of itself are corrected by their
        streams first. Remembers `final` unless it is a copy."""
        heard = final.heard
        while self.sent and self.sent[0].heard.end_s < heard.start_s - self.CROSSTALK_KEEP_S:
            self.sent.popleft()
        copies = []
        for other in self.sent:
            if other.stream is final.stream or other.crosstalk:
                continue
            copy = bleed_of(heard, other.heard)
            if copy is heard and other.source:
                final.crosstalk = True
                return True
            if copy is other.heard and final.source:
                copies.append(other)
        if final not in self.sent:
            self.sent.append(final)
        for other in copies:
            other.crosstalk = True
            other.stream.correct_crosstalk(other)
        return False

    @property
    def prompt(self) -> str | None:
        prompt: str | None = None
        for turn in self.turns:
            if turn.confidence >= self.prompt_min_confidence:
                prompt = prompt_tail(prompt, turn.text, self.max_chars)
        return prompt

    def context_before(self, turn: _Turn, seconds: float, min_confidence: float) -> tuple[np.ndarray, str]:
        """The turns just before `turn` whose audio (joined by `GAP_S` of silence) and `turn`'s own fit in
        `seconds`, and their text (at most `MAX_CONTEXT_CHARS`), back to the first one less confident than
        `min_confidence`: ("", empty audio) if none."""
        try:
            i = self.turns.index(turn)
        except ValueError:
            return np.zeros(0, np.int16), ""  # fell out of the window
        gap = np.zeros(int(self.GAP_S * SAMPLE_RATE), np.int16)
        budget = seconds * SAMPLE_RATE - turn.audio.size
        picked: list[_Turn] = []
        chars = 0
        for prev in reversed([self.turns[k] for k in range(i)]):
            if prev.confidence < min_confidence or not prev.audio.size:
                break  # the context must be contiguous: a doubted turn's audio cannot be given other text
            cost = prev.audio.size + gap.size
            if cost > budget or chars + len(prev.text) + 1 > MAX_CONTEXT_CHARS:
                break
            picked.append(prev)
            budget -= cost
            chars += len(prev.text) + 1
        if not picked:
            return np.zeros(0, np.int16), ""
        picked.reverse()
        audio = np.concatenate([part for t in picked for part in (t.audio, gap)])
        return audio, " ".join(t.text for t in picked)


WINDOW_S = 30.0  # Whisper's window: a revision's context, utterance and next turn fit in one
MAX_CONTEXT_CHARS = 600  # about 150 tokens: within the decoder's prefix limit (adapters.stt_whisper.MAX_PREFIX_TOKENS)


def prompt_tail(prompt: str | None, text: str, max_chars: int) -> str | None:
    """The prompt extended with `text`, keeping whole words of the last `max_chars` characters."""
    joined = f"{prompt} {text}" if prompt else text
    if len(joined) <= max_chars:
        return joined or None
    cut = joined[-max_chars:]
    if joined[-max_chars - 1] != " ":  # the cut fell inside a word: drop its end
        space = cut.find(" ")
        cut = cut[space + 1 :] if 0 <= space < len(cut) - 1 else cut
    return cut.strip() or None


def _without_bleed(audio: np.ndarray, refs: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray | None, list[Any]]:
    """`audio` with each reference's copy subtracted (`pipeline.bleed.suppress_bleed`) and what was found; None
    for the audio when its active level fell by `BLEED_ONLY_DB` (nothing but the other voices was there)."""
    heard, found = audio, []
    for ref, lead in refs:
        audio, f = suppress_bleed(audio, ref, lead)
        if f is not None:
            found.append(f)
    if audio is not heard and speech_level_db(audio) < speech_level_db(heard) - BLEED_ONLY_DB:
        return None, found
    return audio, found


def _same_time(stream_s: float) -> float | None:
    return stream_s


def _consume_outcome(task: asyncio.Task[Any]) -> None:
    """Mark a discarded speculative decode's exception as seen (its final decodes again and reports)."""
    if not task.cancelled():
        task.exception()


async def _result_or_none(task: asyncio.Task[Transcript | None]) -> Transcript | None:
    """The speculative decode's transcript, or None if it was shed, cancelled or failed (then decode again)."""
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled():
            return None
        raise  # we are being cancelled ourselves
    except SttError:
        return None


async def _wait_quietly(task: asyncio.Task[None]) -> None:
    """Wait for the previous final of this stream without inheriting its outcome (it reports its own)."""
    with contextlib.suppress(Exception):
        await asyncio.wait({task})
