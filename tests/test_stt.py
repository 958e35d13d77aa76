"""Speech-to-text: the local engine on real audio, the guards, and the shared scheduler's priorities."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.stt_whisper import LocalWhisper
from domain.events import Word
from pipeline.audio_file import read_audio
from pipeline.guards import (
    after_prefix,
    apply_guards,
    collapse_repeats,
    cut_short,
    repetition_loop,
    too_many_words,
    trim_after_speech,
)
from pipeline.scheduler import SttScheduler
from pipeline.transcript import SttError, SttOverloaded, Transcript, as_float_audio
from testing.data import JFK_TEXT as JFK
from testing.data import SHARED_DATA
from testing.text import wer

DATA = SHARED_DATA


@pytest.mark.slow
@pytest.mark.parametrize("window_s", [None, 5.0])
def test_jfk_wer(whisper: LocalWhisper, jfk16k: np.ndarray, window_s: float | None) -> None:
    whisper.window_s = window_s
    try:
        tr = whisper.transcribe(jfk16k)
    finally:
        whisper.window_s = 5.0
    assert wer(JFK, tr.text) <= 0.10, tr.text
    assert not tr.hallucination and tr.language == "en" and 0.5 < tr.confidence <= 1.0
    assert tr.words and tr.words[0].start_s < 1.0 and 9.5 < tr.words[-1].end_s <= 11.0
    assert all(a.start_s <= b.start_s for a, b in zip(tr.words, tr.words[1:], strict=False))


def test_float_and_int16_input_agree(whisper: LocalWhisper, jfk16k: np.ndarray) -> None:
    clip = jfk16k[: 16000 * 3]
    a = whisper.transcribe(clip, partial=True)
    b = whisper.transcribe(clip.astype(np.float32) / 32768.0, partial=True)
    assert a.text == b.text and a.text


@pytest.mark.parametrize("amplitude", [0.0, 0.003, 0.03, 0.3])
def test_silence_and_white_noise_give_no_text(whisper: LocalWhisper, amplitude: float) -> None:
    noise = (np.random.default_rng(7).standard_normal(16000 * 6) * amplitude).astype(np.float32)
    tr = whisper.transcribe(np.clip(noise, -1, 1))
    assert tr.text == "" and tr.words == [], tr


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 100), np.int16), np.zeros(100, np.float64), np.array([0.0, np.nan], np.float32), [0, 1]],
)
def test_bad_audio_is_a_value_error(whisper: LocalWhisper, bad: object) -> None:
    with pytest.raises(ValueError):
        whisper.transcribe(bad)  # type: ignore[arg-type]


def test_model_path_must_be_a_ctranslate2_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.bin"):
        LocalWhisper(str(tmp_path))


# --------------------------------------------------------------------------------------------------- guards


def _t(text: str, **kw: object) -> Transcript:
    base: dict[str, object] = {"confidence": 0.9, "avg_logprob": -0.2, "no_speech_prob": 0.05}
    base.update(kw)
    return Transcript(text=text, **base)  # type: ignore[arg-type]


def test_repetition_loop() -> None:
    assert repetition_loop("bye bye bye bye bye")
    assert repetition_loop("I think that I think that I think that I think that")
    assert not repetition_loop(
        "ask not what your country can do for you, ask what you can do for your country"
    )
    assert not repetition_loop("no no no")


def test_guards() -> None:
    assert apply_guards(_t("Thank you for watching, bye bye bye bye bye bye")).hallucination
    loop = apply_guards(_t("the the the the the the the", compression_ratio=3.1))
    assert loop.hallucination and loop.reason == "repetition"
    silent = apply_guards(_t("Thank you.", no_speech_prob=0.9, avg_logprob=-1.3))
    assert silent.text == "" and silent.reason == "no_speech"
    assert apply_guards(_t("Some words", avg_logprob=-1.5)).text == ""
    assert apply_guards(_t(". . . . .")).text == ""
    stock = apply_guards(_t("Thank you.", no_speech_prob=0.5))
    assert stock.text == "Thank you." and stock.hallucination
    sure = apply_guards(
        _t(
            "Thank you.",
            no_speech_prob=0.01,
            words=[Word("Thank", 0, 0.2, 0.95), Word("you.", 0.2, 0.4, 0.97)],
        )
    )
    assert not sure.hallucination
    dots = apply_guards(_t("our audits became. . . . . . . ."))
    assert dots.text == "our audits became." and not dots.hallucination


def test_a_sentence_repeated_beyond_what_the_audio_holds_is_kept_once() -> None:
    # what tiny.en gave for the real 2.8 s "go forward ten meters" in a 5 s window: the copies after the first
    # squeezed into 1.74-2.76 s, the last one cut off by the token limit
    spans = [(0.0, 0.84), (0.84, 1.14), (1.14, 1.64), (1.64, 1.74), (1.74, 1.74), (1.74, 1.74), (1.74, 1.74),
             (1.74, 1.94), (1.94, 1.94), (1.94, 1.94), (1.94, 1.94), (1.94, 1.94), (2.76, 2.76), (2.76, 2.76),
             (2.76, 2.76)]  # fmt: skip
    said = "Go forward 10 meters. " * 3 + "Go forward 10"
    words = [Word(w, a, b, 0.9) for w, (a, b) in zip(said.split(), spans, strict=True)]
    tr = apply_guards(_t(said, words=words, audio_s=2.79, compression_ratio=2.39))
    assert tr.text == "Go forward 10 meters." and len(tr.words) == 4 and tr.reason == "repeated"
    assert not tr.hallucination
    # without word times (partials): more words than the audio holds
    assert collapse_repeats(_t("10 of close. 10 of close. 10 of close", audio_s=1.1)).text == "10 of close."
    # said twice, with the time it takes: kept
    twice = [Word("Go", 0.0, 0.3, 0.9), Word("forward.", 0.3, 0.7, 0.9), Word("Go", 1.0, 1.3, 0.9),
             Word("forward.", 1.3, 1.7, 0.9)]  # fmt: skip
    assert collapse_repeats(_t("Go forward. Go forward.", words=twice, audio_s=2.3)).text == "Go forward. Go forward."
    assert collapse_repeats(_t("yes yes, I think so, I think so", audio_s=3.0)).reason == ""
    # copies with time after the first but no length of their own, at the end of the audio: invented
    fives = [Word("5,", 0.0, 0.94, 0.9), Word("5,", 1.06, 1.34, 0.9), Word("5,", 2.04, 2.04, 0.9),
             Word("5,", 2.04, 2.04, 0.9)]  # fmt: skip
    assert collapse_repeats(_t("5, 5, 5, 5,", words=fives, audio_s=2.06)).text == "5, 5,"
    # the sentence in the middle of other words
    tail = _t("well ok fine ok fine ok fine then", audio_s=1.0)
    assert collapse_repeats(tail).text == "well ok fine then"


def test_trim_invented_tail_after_speech() -> None:
    words = [Word("dropped", 6.1, 6.5, 0.8), Word("badly.", 6.5, 6.9, 0.99), Word("Thank", 7.0, 7.2, 0.04),
             Word("you.", 7.2, 7.4, 0.95)]  # fmt: skip
    tr = trim_after_speech(_t("dropped badly. Thank you.", words=list(words)), speech_end_s=7.0)
    assert tr.text == "dropped badly." and [w.word for w in tr.words] == ["dropped", "badly."]
    confident = [*words[:2], Word("Thank", 7.0, 7.2, 0.9), Word("you.", 7.2, 7.4, 0.95)]
    kept = trim_after_speech(_t("dropped badly. Thank you.", words=confident), speech_end_s=7.0)
    assert kept.text == "dropped badly. Thank you."


# ------------------------------------------------------------------------------------------------ scheduler


class GatedStt:
    """A SpeechToText whose decodes wait for the test to open a gate; records the order of calls."""

    engine = "gated"
    model = "test"

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()
        self.fail_on: set[str] = set()

    def transcribe(
        self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False
    ) -> Transcript:
        label = prompt or ""
        self.calls.append((label, partial))
        self.started.release()
        assert self.gate.wait(30)
        if label in self.fail_on:
            raise RuntimeError(f"engine broke on {label}")
        return Transcript(text=f"text {label}", confidence=0.9)


async def _started(stt: GatedStt) -> None:
    assert await asyncio.to_thread(stt.started.acquire, True, 30)


AUDIO = np.zeros(16000, np.int16)


async def test_finals_overtake_partials_and_shed_them() -> None:
    stt = GatedStt()
    sched = SttScheduler(stt, workers=1)
    blocker = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f0"))
    await _started(stt)  # the worker is busy with f0
    p1 = asyncio.create_task(sched.transcribe_partial(AUDIO, prompt="p1", key="a"))
    p2 = asyncio.create_task(sched.transcribe_partial(AUDIO, prompt="p2", key="b"))
    await asyncio.sleep(0)
    f1 = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f1"))
    assert await p1 is None and await p2 is None  # a waiting final sheds queued partials
    stt.gate.set()
    assert (await blocker).text == "text f0"
    assert (await f1).text == "text f1"
    assert stt.calls == [("f0", False), ("f1", False)]
    assert sched.stats.partials_shed == 2 and sched.stats.finals_done == 2
    await sched.aclose()


async def test_newer_partial_of_a_stream_replaces_the_older() -> None:
    stt = GatedStt()
    sched = SttScheduler(stt, workers=1)
    old = asyncio.create_task(sched.transcribe_partial(AUDIO, prompt="old", key="s1"))
    new = asyncio.create_task(sched.transcribe_partial(AUDIO, prompt="new", key="s1"))
    assert await old is None  # replaced while still queued
    stt.gate.set()
    result = await new
    assert result is not None and result.text == "text new"
    assert stt.calls == [("new", True)]
    await sched.aclose()


async def test_partials_give_way_to_a_running_final_and_keep_a_worker_for_finals() -> None:
    stt = GatedStt()
    sched = SttScheduler(stt, workers=2)
    busy = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f0"))
    await _started(stt)
    assert sched.spare and not sched.partial_ok  # a worker is free, but a final is decoding
    assert await sched.transcribe_partial(AUDIO, prompt="p", key="s1") is None  # shed at once, not queued
    spec = asyncio.create_task(sched.transcribe_partial(AUDIO, prompt="spec", key="s2", final_quality=True))
    await _started(stt)  # a speculative final may use the second worker...
    assert not sched.spare  # ...and then nothing else best-effort may start: finals keep their worker
    f1 = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f1"))
    stt.gate.set()
    assert (await busy).text == "text f0" and (await f1).text == "text f1"
    assert (await spec) is not None
    assert ("p", True) not in stt.calls
    await sched.aclose()


async def test_partials_are_limited_to_their_share_of_worker_time() -> None:
    clock = FakeClock()
    stt = TimedStt(clock, took={"busy": 2.0})
    stt.gate.set()
    sched = SttScheduler(stt, workers=1, partial_share=0.25, clock=clock)
    assert await sched.transcribe_partial(AUDIO, prompt="p0", key="s") is not None
    assert sched.partial_ok
    # the last window was spent on partials: 2 of 5 worker-seconds
    await sched.transcribe_partial(AUDIO, prompt="busy", key="s")
    assert sched.partial_load() >= 0.4 and not sched.partial_ok
    assert await sched.transcribe_partial(AUDIO, prompt="p1", key="s") is None
    assert (await sched.transcribe_final(AUDIO, prompt="f")).text == "text f"  # finals are never limited
    await sched.aclose()


async def test_bounded_final_queue_raises_overloaded_and_engine_errors_are_stt_errors() -> None:
    stt = GatedStt()
    stt.fail_on = {"bad"}
    sched = SttScheduler(stt, workers=1, max_pending=1)
    running = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="bad"))
    await _started(stt)
    queued = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="ok"))
    await asyncio.sleep(0)
    with pytest.raises(SttOverloaded):
        await sched.transcribe_final(AUDIO, prompt="too many")
    assert sched.stats.finals_rejected == 1
    stt.gate.set()
    with pytest.raises(SttError) as err:
        await running
    assert err.value.code == "stt_failed" and "engine broke" in err.value.message
    assert (await queued).text == "text ok"  # the worker survived the failure
    await sched.aclose()
    with pytest.raises(SttError):
        await sched.transcribe_final(AUDIO)
    assert await sched.transcribe_partial(AUDIO) is None


async def test_aclose_finishes_queued_finals() -> None:
    stt = GatedStt()
    sched = SttScheduler(stt, workers=2)
    finals = [asyncio.create_task(sched.transcribe_final(AUDIO, prompt=f"f{i}")) for i in range(5)]
    await _started(stt)
    closing = asyncio.create_task(sched.aclose())
    stt.gate.set()
    await closing
    assert sorted(f.result().text for f in finals) == [f"text f{i}" for i in range(5)]


class HurriedStt(GatedStt):
    """GatedStt that takes `hurry` and records it per prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.hurried: dict[str, bool] = {}

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False,
                   hurry: bool = False) -> Transcript:
        self.hurried[prompt or ""] = hurry
        return super().transcribe(audio, prompt=prompt, partial=partial)


@pytest.mark.parametrize("on", [True, False])
async def test_a_final_that_others_wait_behind_is_hurried(on: bool) -> None:
    """Under a backlog a final starts with `hurry` (greedy decoding: it costs less, so the queue drains); the last
    one of a backlog, and a final with nothing behind it, decode as usual. `hurry=False` (STT_HURRY=false): never."""
    stt = HurriedStt()
    sched = SttScheduler(stt, workers=1, hurry=on)
    f0 = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f0"))
    await _started(stt)  # f0 decodes with nothing waiting
    queued = [asyncio.create_task(sched.transcribe_final(AUDIO, prompt=f"f{i}")) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    stt.gate.set()
    assert [t.text for t in await asyncio.gather(f0, *queued)] == [f"text f{i}" for i in range(4)]
    assert stt.hurried == {"f0": False, "f1": on, "f2": on, "f3": False}
    assert sched.stats.finals_hurried == (2 if on else 0)
    await sched.aclose()


def test_a_final_whose_words_do_not_cover_the_audio_ended_early() -> None:
    def words(*spans: tuple[float, float]) -> Transcript:
        return Transcript(text="x", words=[Word("w", a, b, 0.9) for a, b in spans])

    assert not cut_short(words((0.3, 0.6), (0.6, 1.0), (6.5, 7.0)), audio_s=7.8)  # ends with the speech
    assert cut_short(words((0.3, 0.6), (0.6, 1.0), (3.0, 3.4)), audio_s=7.8)  # 4 s of audio after the last word
    # the aligner stretched "and" over the missing text, then squeezed the rest at the end
    assert cut_short(words((4.9, 5.24), (5.24, 8.14), (8.14, 8.14), (8.14, 8.14)), audio_s=8.34)
    assert not cut_short(Transcript(text=""), audio_s=8.0)


@pytest.mark.slow
def test_a_decode_the_repetition_penalty_ended_early_is_caught(whisper: LocalWhisper) -> None:
    # a 7.5 s turn that tiny.en under the repetition penalty, unprompted, ends at "... and I am really"
    x = read_audio(DATA / "mobile_mixed.wav", rate=16000, mono=True).pcm[int(6.386 * 16000) : int(14.73 * 16000)]
    penalised = whisper._decode(as_float_audio(x), None, False, 1.1)
    assert cut_short(penalised, x.size / 16000), penalised.text
    # what users get: the whole sentence, unprompted (no penalty) and prompted (penalty, re-decoded if cut short)
    assert whisper.repetition_penalty > 1
    for prompt in (None, "Welcome, and thank you for your time. What have you been building recently?"):
        tr = whisper.transcribe(x, prompt=prompt)
        assert tr.text.rstrip(".! ").endswith("how smooth it feels"), (prompt, tr.text)


async def test_engine_redecodes_are_counted() -> None:
    class Redecoding(GatedStt):
        def transcribe(self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False) -> Transcript:
            tr = super().transcribe(audio, prompt=prompt, partial=partial)
            tr.redecoded = prompt == "twice"
            return tr

    stt = Redecoding()
    stt.gate.set()
    sched = SttScheduler(stt, workers=1)
    await sched.transcribe_final(AUDIO, prompt="once")
    await sched.transcribe_final(AUDIO, prompt="twice")
    assert sched.stats.redecodes == 1
    await sched.aclose()


class _ScriptedDecodes(LocalWhisper):
    """The real engine's decision logic over scripted decoder outputs: prompted and plain decodes answer from
    `texts` (keyed by whether a prompt was given)."""

    def __init__(self, prompted: str, plain: str) -> None:
        super().__init__()
        self.texts = {True: prompted, False: plain}
        self.decodes: list[str | None] = []

    def _decode(self, x: np.ndarray, prompt: str | None, partial: bool, repetition_penalty: float) -> Transcript:
        self.decodes.append(prompt)
        text = self.texts[prompt is not None]
        step = x.size / 16000 / max(1, len(text.split()))
        words = [Word(w, i * step, (i + 1) * step, 0.9) for i, w in enumerate(text.split())]
        return Transcript(text=text, words=words, confidence=0.5, audio_s=x.size / 16000)


@pytest.mark.slow
def test_more_words_than_the_audio_can_hold_are_decoded_again_or_flagged() -> None:
    two_s = np.zeros(32000, np.int16)
    invented = "How would you feel now? Thank you so much for watching, and I'll see you next time."
    assert too_many_words(Transcript(text=invented), 2.0) and not too_many_words(Transcript(text=invented), 4.0)
    assert not too_many_words(Transcript(text="How was it resolved?"), 1.0)

    stt = _ScriptedDecodes(invented, "How was it resolved?")
    tr = stt.transcribe(two_s, prompt="Tell me about a conflict on your team.")
    assert tr.text == "How was it resolved?" and not tr.hallucination and tr.redecoded
    assert stt.decodes == ["Tell me about a conflict on your team.", None]
    # the plain decode invents as much: nothing to trust, the segment is flagged (kept out of the analysers)
    stt.texts[False] = invented
    tr = stt.transcribe(two_s, prompt="Tell me about a conflict on your team.")
    assert tr.text == invented and tr.hallucination and tr.reason == "too_many_words"
    # unprompted: nothing else to try, one decode
    stt.decodes.clear()
    assert stt.transcribe(two_s).hallucination and stt.decodes == [None]
    # partials are never decoded twice
    assert not stt.transcribe(two_s, prompt="x", partial=True).hallucination


class RevisingGatedStt(GatedStt):
    def revise(self, audio: np.ndarray, *, context: np.ndarray, context_text: str,
               after: np.ndarray | None = None) -> Transcript:
        self.calls.append((f"revise {context_text}", False))
        self.started.release()
        assert self.gate.wait(30)
        return Transcript(text=f"revised {context_text}", confidence=0.9)


class FakeClock:
    """The scheduler's clock, moved by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TimedStt(RevisingGatedStt):
    """A decode of label L takes `took[L]` seconds of `clock` (the scheduler's): a long decode, at once."""

    def __init__(self, clock: FakeClock, took: dict[str, float]) -> None:
        super().__init__()
        self.clock = clock
        self.took = took

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None, partial: bool = False) -> Transcript:
        tr = super().transcribe(audio, prompt=prompt, partial=partial)
        self.clock.advance(self.took.get(prompt or "", 0.0))
        return tr


async def test_revisions_run_on_spare_capacity_only_and_give_way_under_load() -> None:
    assert not SttScheduler(GatedStt()).revises  # an engine without `revise`
    with pytest.raises(SttError) as err:
        await SttScheduler(GatedStt()).transcribe_revision(AUDIO, context=AUDIO, context_text="x")
    assert err.value.code == "stt_unsupported"

    stt = RevisingGatedStt()
    sched = SttScheduler(stt, workers=2, max_revisions=2)
    assert sched.revises
    f0 = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f0"))
    await _started(stt)
    r1 = asyncio.create_task(sched.transcribe_revision(AUDIO, context=AUDIO, context_text="r1"))
    await asyncio.sleep(0.05)
    assert stt.calls == [("f0", False)]  # a worker is free, but it stays free for finals
    f1 = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f1"))
    await _started(stt)
    r2 = asyncio.create_task(sched.transcribe_revision(AUDIO, context=AUDIO, context_text="r2"))
    r3 = asyncio.create_task(sched.transcribe_revision(AUDIO, context=AUDIO, context_text="r3"))
    assert await r1 is None  # pushed out of the full queue (max_revisions=2)
    stt.gate.set()
    assert (await f0).text == "text f0" and (await f1).text == "text f1"
    assert (await r2).text == "revised r2" and (await r3).text == "revised r3"
    assert [c for c, _ in stt.calls] == ["f0", "f1", "revise r2", "revise r3"]
    assert sched.stats.revisions_done == 2 and sched.stats.revisions_dropped == 1
    assert sched.stats.jobs_by_kind["revision"] == 2 and sched.stats.finals_done == 2
    # queued revisions are dropped at close; finals still finish
    stt.gate.clear()
    f2 = asyncio.create_task(sched.transcribe_final(AUDIO, prompt="f2"))
    await _started(stt)
    r4 = asyncio.create_task(sched.transcribe_revision(AUDIO, context=AUDIO, context_text="r4"))
    await asyncio.sleep(0)
    closing = asyncio.create_task(sched.aclose())
    await asyncio.sleep(0)
    stt.gate.set()
    await closing
    assert await r4 is None and (await f2).text == "text f2"


def test_where_the_forced_context_ends_is_found() -> None:
    class W:
        def __init__(self, word: str) -> None:
            self.word = word

    words = [W(w) for w in [" We", " move", " every", " service", " to", " short", "-lived", " tokens.", " What"]]
    assert after_prefix(words, "We move every service to short-lived tokens.") == 8
    assert after_prefix(words, "We moved every service") is None  # the decoder did not keep the prefix
    assert after_prefix(words, "") == 0


@pytest.mark.slow
def test_a_revision_with_the_conversation_around_it_hears_what_the_utterance_alone_does_not(
    whisper: LocalWhisper,
) -> None:
    # security_positive: tiny.en decodes the 1.4 s question "What about data at rest?" alone as "What am I today
    # that rest?"; with the turns before it and the reply after it in the window, it gets closer ("What about the
    # address?" here; right in the pipeline, whose context text differs)
    gt = json.loads((DATA / "security_positive.json").read_text())["turns"]
    pcm = read_audio(DATA / "security_positive.wav", rate=16000, mono=True).pcm

    def clip(turn: dict[str, Any]) -> np.ndarray:
        return pcm[int((turn["start_s"] - 0.3) * 16000) : int((turn["end_s"] + 0.5) * 16000)]

    gap = np.zeros(4800, np.int16)
    question = clip(gt[2])
    alone = whisper.transcribe(question)
    assert wer(gt[2]["text"], alone.text) >= 0.4, alone.text
    context = np.concatenate([clip(gt[0]), gap, clip(gt[1]), gap])
    tr = whisper.revise(question, context=context, context_text=f"{gt[0]['text']} {gt[1]['text']}",
                        after=np.concatenate([gap, clip(gt[3])]))  # fmt: skip
    assert wer(gt[2]["text"], tr.text) < wer(gt[2]["text"], alone.text), (tr.text, alone.text)
    # the words are the question's, timed within it (not the context's, not the reply's)
    assert [w.word.lower() for w in tr.words[:2]] == ["what", "about"] and len(tr.words) <= 6, tr.words
    assert 0 <= tr.words[0].start_s < tr.words[-1].end_s <= question.size / 16000
    assert tr.confidence > 0 and not tr.hallucination


async def test_revisions_wait_while_live_work_keeps_the_workers_busy() -> None:
    clock = FakeClock()
    stt = TimedStt(clock, took={"busy": 5.0})
    stt.gate.set()
    sched = SttScheduler(stt, workers=1, revision_max_load=0.4, clock=clock)
    await sched.transcribe_final(AUDIO, prompt="busy")  # finals took 5 of the last 10 worker-seconds
    stt.calls.clear()
    assert sched.live_load() >= 0.5
    rev = asyncio.create_task(sched.transcribe_revision(AUDIO, context=AUDIO, context_text="r"))
    await asyncio.sleep(0.7)
    assert not rev.done() and stt.calls == []  # held back, though the worker is idle
    assert (await sched.transcribe_final(AUDIO, prompt="f")).text == "text f"  # live work is not
    clock.advance(SttScheduler.LOAD_WINDOW_S + 1)  # the load has decayed
    assert (await asyncio.wait_for(rev, 5)).text == "revised r"  # taken up without any new job to wake it
    await sched.aclose()


def test_a_hurried_final_is_the_greedy_decode(whisper: LocalWhisper) -> None:
    """`transcribe(hurry=True)` decodes as a beam-1 engine does (same words, times and confidence), everything
    else as a final (word timestamps); without it the final keeps its beam."""
    from adapters.stt_whisper import HURRY_BEAM_SIZE

    pcm = read_audio(SHARED_DATA / "security_positive.stereo.wav", rate=16000).channel(0)
    clip = np.concatenate([pcm[int(25.1 * 16000) : int(27.5 * 16000)], np.zeros(8000, np.int16)])
    assert whisper.beam_size > HURRY_BEAM_SIZE == 1
    beam = whisper.transcribe(clip)
    greedy = LocalWhisper(beam_size=HURRY_BEAM_SIZE).transcribe(clip)
    assert greedy.confidence != beam.confidence  # the two decodes are told apart on this clip
    hurried = whisper.transcribe(clip, hurry=True)
    assert hurried.text == greedy.text and hurried.words and hurried.confidence == greedy.confidence
    assert [(w.word, w.start_s, w.end_s) for w in hurried.words] == [(w.word, w.start_s, w.end_s) for w in greedy.words]
    # the flag does not stick to the engine's thread: the next final has its beam again
    assert whisper.transcribe(clip).confidence == beam.confidence
    # with the interview's vocabulary every decode of the call is greedy too (the hint guard's retry included)
    terms = ("incident",)
    assert (whisper.transcribe(clip, hurry=True, vocabulary=terms).confidence
            == LocalWhisper(beam_size=HURRY_BEAM_SIZE).transcribe(clip, vocabulary=terms).confidence)


def test_the_silence_after_the_last_word_is_not_decoded_as_one_more_window(whisper: LocalWhisper) -> None:
    """With word timestamps faster-whisper decodes again from the last word's end when the text did not end in a
    lone timestamp: in a final that window is only the silence after the speech (the stream's padding), where
    tiny.en may invent a tail ("Thank you."). It is skipped (`silent_rest`), with the same words for the speech
    (security_positive's "Tell me about an incident you handled." + 0.5 s of padding, as a pause decode hears
    it); a window with speech in it, or longer than TAIL_S, is still decoded."""
    from adapters.stt_whisper import silent_rest

    pcm = read_audio(SHARED_DATA / "security_positive.stereo.wav", rate=16000).channel(0)
    clip = np.concatenate([pcm[int(25.1 * 16000) : int(27.5 * 16000)], np.zeros(8000, np.int16)])
    both = LocalWhisper(skip_tail=False).transcribe(clip)
    skipped = whisper.transcribe(clip)
    assert skipped.text == both.text and skipped.text.strip() == "Tell me about an incident you handled."
    assert [w.word for w in skipped.words] == [w.word for w in both.words]

    x = as_float_audio(clip)
    features = whisper._whisper.feature_extractor(x)
    last_word_end = skipped.words[-1].end_s

    def window_from(start_s: float) -> np.ndarray:  # what faster-whisper hands encode(): padded to 3000 frames
        seg = features[:, int(start_s * 100) : x.size // 160]
        return np.pad(seg, ((0, 0), (0, 3000 - seg.shape[1])))

    assert x.size / 16000 - last_word_end <= 1.0
    assert silent_rest(window_from(last_word_end), x)  # the window faster-whisper decodes next: silence
    assert not silent_rest(window_from(1.6), x)  # "... you handled." still in it
    assert not silent_rest(window_from(0.5), x)  # longer than TAIL_S
