"""Headless Chromium for the browser tests: the Debian package at /usr/bin/chromium driven by Playwright's CDP
client (no browser is ever downloaded), with a fake camera and a fake microphone playing a WAV file.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",  # grant the microphone and camera without a prompt
    "--use-fake-device-for-media-stream",  # a fake camera too (a test pattern); the microphone from the WAV
    # aiortc cannot resolve the .local names Chromium uses to hide host addresses; we are on loopback anyway.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


def fake_microphone_args(wav: Path) -> list[str]:
    """CHROMIUM_ARGS with the fake microphone playing `wav` (16-bit PCM, looped by Chromium)."""
    return [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"]


def write_channel(src: Path, channel: int | None, dst: Path) -> None:
    """One channel of `src` as 16-bit mono PCM WAV (what Chromium's fake capture reads); None = silence."""
    with wave.open(str(src)) as w:
        assert w.getsampwidth() == 2, "the shared dialogues are 16-bit PCM"
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    mono = np.zeros(len(pcm), dtype="<i2") if channel is None else np.ascontiguousarray(pcm[:, channel])
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(mono.tobytes())


def write_speech(src: Path, dst: Path, *, tail_s: float = 2.0, gain: float = 1.0) -> None:
    """Any audio file (e.g. `jfk.flac`) as 16-bit mono 48 kHz PCM WAV with `tail_s` of silence after it, so each
    pass of Chromium's looped fake capture ends an utterance before the next begins; `gain` 0 makes a silent one
    as long as the file."""
    from pipeline.audio_file import read_audio

    rate = 48_000
    pcm = (read_audio(src, rate=rate, mono=True).pcm * gain).astype("<i2")
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.concatenate([pcm, np.zeros(int(tail_s * rate), dtype="<i2")]).tobytes())
