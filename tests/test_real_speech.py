"""Short real recordings (`../shared/data/real_short/`: card names, "go forward ten meters") come out once.

tiny.en decoding a 1-3 s command in a shortened encoder window repeated it until the window was full ("Go forward
10 meters. Go forward 10 meters. Go forward 10 meters. Go forward 10"). Each clip goes through the CLI's `run()`
and over WebRTC (an aiortc peer publishing it to the real service) and is held to whole-file faster-whisper on
the same model: no segment says a sentence twice, and the WER against the clips' ground truth stays within a
word of the whole-file decode's.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.stt_whisper import LocalWhisper
from pipeline.audio_file import read_audio
from pipeline.cli import build_parser, run
from pipeline.guards import normalise
from testing.data import SHARED_DATA
from testing.live_server import LiveServer, live_server, test_settings
from testing.text import corpus_wer, transcript_of
from testing.whip_client import WavChannelTrack, whip_publish

CLIPS_DIR = SHARED_DATA / "real_short"
# 22 words in all: 0.1 is two words worse than whole-file decoding over the six clips
MARGIN = 0.1


def clips() -> dict[str, str]:
    """file name -> what is said"""
    meta = json.loads((CLIPS_DIR / "transcripts.json").read_text())
    return {name: clip["text"] for name, clip in meta["clips"].items()}


def says_a_sentence_twice(text: str) -> bool:
    """Whether some run of >= 2 words follows itself (on normalised words)."""
    words = normalise(text).split()
    return any(
        words[i : i + n] == words[i + n : i + 2 * n]
        for n in range(2, len(words) // 2 + 1)
        for i in range(len(words) - 2 * n + 1)
    )


def test_a_sentence_said_twice_is_recognised() -> None:
    assert says_a_sentence_twice("Go forward 10 meters. Go forward 10 meters.")
    assert says_a_sentence_twice("so 10 of close, 10 of close")
    assert not says_a_sentence_twice("5 5")  # "five five" is what cards_004 says
    assert not says_a_sentence_twice("Eight of spades, four of close, seven of hearts.")


_offline: dict[str, str] = {}


def offline_text(whisper: LocalWhisper, name: str) -> str:
    """Whole-file faster-whisper (its own 30 s window and defaults) on the same model."""
    if name not in _offline:
        segs, _ = whisper._whisper.transcribe(str(CLIPS_DIR / name), language="en")
        _offline[name] = " ".join(s.text.strip() for s in segs)
    return _offline[name]


def check_against_offline(whisper: LocalWhisper, streamed: dict[str, list[dict[str, Any]]]) -> None:
    truth = clips()
    for name, events in streamed.items():
        texts = [e["text"] for e in events if e["type"] in ("segment.final", "segment.revised") and e["text"]]
        assert texts, (name, "no final")
        for text in texts:
            assert not says_a_sentence_twice(text), (name, text)
        assert not says_a_sentence_twice(transcript_of(events)), (name, transcript_of(events))
    ours = corpus_wer([(truth[n], transcript_of(evs)) for n, evs in streamed.items()])
    offline = corpus_wer([(truth[n], offline_text(whisper, n)) for n in streamed])
    assert ours is not None and offline is not None
    summary = {n: (transcript_of(evs), offline_text(whisper, n)) for n, evs in streamed.items()}
    assert ours <= offline + MARGIN, (ours, offline, summary)


@pytest.mark.slow
async def test_short_real_commands_come_out_once_from_the_cli(whisper: LocalWhisper) -> None:
    streamed: dict[str, list[dict[str, Any]]] = {}
    for name in clips():
        path = CLIPS_DIR / name
        out = io.StringIO()
        assert await run(read_audio(path), build_parser().parse_args(["transcribe", str(path)]), whisper, out,
                         name) == 0  # fmt: skip
        streamed[name] = [json.loads(line) for line in out.getvalue().splitlines()]
    check_against_offline(whisper, streamed)


@pytest.mark.slow
def test_a_window_that_makes_the_decoder_repeat_is_decoded_again_in_whisper_s_window() -> None:
    # 5 s windows are where tiny.en repeated these clips; the guard keeps one copy and the engine decodes again
    # in the full window
    looping = LocalWhisper(min_window_s=5.0)
    for name in ("goforward.wav", "cards_001.wav"):
        pcm = read_audio(CLIPS_DIR / name, rate=16000, mono=True).pcm
        tr = looping.transcribe(pcm)
        assert not says_a_sentence_twice(tr.text) and not tr.hallucination, (name, tr.text)
        assert tr.reason == "repeated" and tr.redecoded, (name, tr)
        assert corpus_wer([(clips()[name], tr.text)]) == 0.0, (name, tr.text)
    # partials are not decoded twice: the copies are dropped
    partial = looping.transcribe(read_audio(CLIPS_DIR / "goforward.wav", rate=16000, mono=True).pcm, partial=True)
    assert not says_a_sentence_twice(partial.text), partial.text


async def _one_clip(server: LiveServer, name: str) -> list[dict[str, Any]]:
    """A candidate publishes the clip (then 1 s of silence) and leaves; what an observer received."""
    iid = await server.create_interview()
    observer_token = (await server.token(iid, "observer", "Obi"))["token"]
    candidate_token = (await server.token(iid, "candidate", "Cat"))["token"]
    whip = f"{server.url}/whip/{iid}"
    observer = await whip_publish(whip, observer_token, track=None, analysis=True)
    received: list[dict[str, Any]] = []
    try:
        await observer.wait_channel_open()
        track = WavChannelTrack(CLIPS_DIR / name, tail_s=1.0)
        candidate = await whip_publish(whip, candidate_token, track=track)
        try:
            await track.wait_finished()
        finally:
            await candidate.close()  # leaving drains the stream: its last final comes before participant.left
        while not any(e["type"] == "participant.left" and e["speaker"]["role"] == "candidate" for e in received):
            received.append(await observer.events.get())
    finally:
        await observer.close()
    return received


@pytest.mark.slow
async def test_short_real_commands_come_out_once_over_webrtc(
    tmp_path: Path, mongo_url: str, whisper: LocalWhisper
) -> None:
    names = list(clips())
    async with live_server(test_settings(tmp_path, mongo_url)) as server:
        async with asyncio.timeout(180):
            results = await asyncio.gather(*(_one_clip(server, name) for name in names))
    check_against_offline(whisper, dict(zip(names, results, strict=True)))
