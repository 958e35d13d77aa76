"""The OpenAI-compatible adapter against a real HTTP server on loopback (testing/openai_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import jiwer
import numpy as np
import pytest

from adapters.stt_openai import OpenAITranscriber, wav_bytes
from adapters.stt_whisper import LocalWhisper
from domain.events import ErrorEvent, SegmentEvent, Speaker, StreamEvent
from pipeline.audio_file import read_audio
from pipeline.scheduler import SttScheduler
from pipeline.transcript import SttError
from testing.data import JFK_TEXT as JFK
from testing.data import SHARED_DATA
from testing.net import free_port
from testing.openai_server import OpenAICompatServer
from testing.text import normalize as _norm

DATA = SHARED_DATA


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAICompatServer]:
    with OpenAICompatServer(LocalWhisper()) as srv:
        yield srv


def test_wav_bytes_round_trip(jfk16k: np.ndarray) -> None:
    back = read_audio(wav_bytes(jfk16k), rate=16000, mono=True)
    assert back.rate == 16000 and np.array_equal(back.pcm, jfk16k)


@pytest.mark.slow
def test_transcribes_jfk_through_the_api(server: OpenAICompatServer, jfk16k: np.ndarray) -> None:
    stt = OpenAITranscriber(base_url=server.base_url, api_key=server.api_key, model="whisper-1")
    tr = stt.transcribe(jfk16k, prompt="inaugural address")
    stt.close()
    assert jiwer.wer(_norm(JFK), _norm(tr.text)) <= 0.10, tr.text
    assert tr.words and tr.words[-1].end_s > 9.0 and 0 < tr.confidence <= 1 and not tr.hallucination
    req = server.requests[-1]
    assert req["response_format"] == "verbose_json" and req["prompt"] == "inaugural address"
    assert set(req["timestamp_granularities"]) == {"word", "segment"} and req["language"] == "en"


def test_plain_json_servers_are_supported(jfk16k: np.ndarray) -> None:
    with OpenAICompatServer(LocalWhisper(), verbose_json=False) as srv:
        stt = OpenAITranscriber(base_url=srv.base_url, api_key=srv.api_key)
        first = stt.transcribe(jfk16k[: 16000 * 3])
        second = stt.transcribe(jfk16k[: 16000 * 3])
        stt.close()
    assert first.text and first.text == second.text and first.words == []
    # one rejected verbose_json request, then plain json for the rest of the adapter's life
    assert [r["response_format"] for r in srv.requests] == ["verbose_json", "json", "json"]


def test_silence_gives_no_text(server: OpenAICompatServer) -> None:
    stt = OpenAITranscriber(base_url=server.base_url, api_key=server.api_key)
    assert stt.transcribe(np.zeros(16000 * 3, np.int16)).text == ""
    stt.close()


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"api_key": "wrong"}, "stt_auth"),
        ({"model": "no-such-model"}, "stt_failed"),
        ({"base_url": "unreachable"}, "stt_unavailable"),
    ],
)
def test_provider_errors_become_stt_errors(
    server: OpenAICompatServer, kwargs: dict[str, str], code: str
) -> None:
    args = {"base_url": server.base_url, "api_key": server.api_key, "max_retries": 0, **kwargs}
    if args["base_url"] == "unreachable":
        args["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    stt = OpenAITranscriber(**args)  # type: ignore[arg-type]
    with pytest.raises(SttError) as err:
        stt.transcribe(np.zeros(16000, np.int16))
    stt.close()
    assert err.value.code == code
    assert "test-key" not in err.value.message  # the key is never echoed


@pytest.mark.slow
async def test_stream_over_the_openai_adapter(server: OpenAICompatServer) -> None:
    """A participant stream with the cloud adapter: finals arrive marked with engine/model of that adapter."""
    from pipeline.stream import ParticipantStream, StreamConfig

    audio = read_audio(DATA / "mobile_mixed.wav")
    stt = OpenAITranscriber(base_url=server.base_url, api_key=server.api_key)
    sched = SttScheduler(stt)
    events: list[StreamEvent] = []
    stream = ParticipantStream(Speaker("candidate", "C", "c1"), sched, events.append, in_rate=audio.rate, channels=1,
                               config=StreamConfig(partial_interval_s=0, emit_levels_every_s=0))  # fmt: skip
    step = audio.rate // 50
    for i in range(0, 15 * audio.rate, step):  # the first two turns
        stream.push(audio.pcm[i : i + step])
        await asyncio.sleep(0)
    await stream.aclose()
    await sched.aclose()
    stt.close()
    finals = [e for e in events if isinstance(e, SegmentEvent) and e.final]
    assert not [e for e in events if isinstance(e, ErrorEvent)]
    assert len(finals) == 2 and all(f.engine == "openai" and f.model == "whisper-1" for f in finals)
    assert "swift" in finals[1].text.lower()
