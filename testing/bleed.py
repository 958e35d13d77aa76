"""Dialogues whose channels bleed into each other: what a microphone hears when the other participant's voice
comes out of speakers beside it (no echo cancellation) or when two people share a room.

Each stereo dialogue of `testing.dialogues.dialogue_set()` (interviewer left, candidate right) is written again
with the other channel added into each one, `level_db` below it (−10, −20, −30 dB) and 20–80 ms later (a seeded
draw per dialogue, level and side, so the set is the same on every machine):

    left'  = left  + 10^(level_db/20) · right delayed by d_left
    right' = right + 10^(level_db/20) · left  delayed by d_right

as `<name>.bleed<level_db>dB.stereo.wav` with `<name>.bleed<level_db>dB.json` (the source's ground truth, the
turns unchanged, plus `bleed: {level_db, delay_ms: [left, right]}`) into a cache directory, once per version.

    python -m testing.bleed [--out DIR] [--levels -10,-20,-30]     # make them (prints the directory)

`score_crosstalk(events, truth)` scores what `python -m pipeline transcribe --channels-as-speakers` made of one:
duplicated sentences, ground-truth turns lost, per-participant WER (the tests and `benchmarks.crosstalk` use it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import wave
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.guards import matched_words
from testing.dialogues import dialogue_set
from testing.text import corpus_wer, normalize

LEVELS_DB = (-10, -20, -30)
DELAY_MS = (20.0, 80.0)  # acoustic path plus a second capture chain: tens of ms, well under the guard's 300 ms
_VERSION = 1  # bump when the mixing changes: the cache directory is named after it


def bleed_name(name: str, level_db: int) -> str:
    return f"{name}.bleed{level_db}dB"


def read_stereo(path: Path) -> tuple[int, np.ndarray]:
    """(rate, int16 array of shape (frames, 2)) of a 16-bit stereo WAV."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 2 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: not a 16-bit stereo WAV")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, 2)
    return rate, pcm


def write_stereo(path: Path, rate: int, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, np.int16).tobytes())


def mix_bleed(pcm: np.ndarray, rate: int, level_db: float, delay_ms: tuple[float, float]) -> np.ndarray:
    """`pcm` (frames, 2) with each channel's partner added `level_db` lower and `delay_ms` (into left, into
    right) later; saturated to int16."""
    if pcm.ndim != 2 or pcm.shape[1] != 2:
        raise ValueError(f"expected (frames, 2) audio, got shape {pcm.shape}")
    gain = 10.0 ** (level_db / 20.0)
    x = pcm.astype(np.float64)
    out = x.copy()
    for dst, src, ms in ((0, 1, delay_ms[0]), (1, 0, delay_ms[1])):
        d = int(round(ms * rate / 1000))
        if d < len(x):
            out[d:, dst] += gain * x[: len(x) - d, src]
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def delays_for(name: str, level_db: int) -> tuple[float, float]:
    """The (into left, into right) delays of one bleed file: drawn in DELAY_MS, seeded by name and level."""
    rng = np.random.default_rng(zlib.crc32(f"{name}:{level_db}".encode()))
    lo, hi = DELAY_MS
    return round(float(rng.uniform(lo, hi)), 1), round(float(rng.uniform(lo, hi)), 1)


def write_bleed(name: str, directory: Path, levels: tuple[int, ...], out: Path) -> list[Path]:
    """Write dialogue `name` of `directory` with bleed at each of `levels` into `out`: the stereo WAVs."""
    rate, pcm = read_stereo(directory / f"{name}.stereo.wav")
    truth: dict[str, Any] = json.loads((directory / f"{name}.json").read_text())
    written = []
    for level in levels:
        delays = delays_for(name, level)
        wav = out / f"{bleed_name(name, level)}.stereo.wav"
        write_stereo(wav, rate, mix_bleed(pcm, rate, level, delays))
        meta = {**truth, "name": bleed_name(name, level), "bleed": {"level_db": level, "delay_ms": list(delays)}}
        (out / f"{bleed_name(name, level)}.json").write_text(json.dumps(meta, indent=1))
        written.append(wav)
    return written


def _version(sources: list[tuple[str, Path]], levels: tuple[int, ...]) -> str:
    key = json.dumps([_VERSION, list(levels), DELAY_MS, [[n, str(d)] for n, d in sources]])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def default_cache(sources: list[tuple[str, Path]], levels: tuple[int, ...]) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "interview-worker" / f"bleed-{_version(sources, levels)}"


def make_bleed(out: Path | None = None, levels: tuple[int, ...] = LEVELS_DB) -> Path:
    """Write the bleed versions of every dialogue into `out` (default: a per-version cache) unless there."""
    sources = dialogue_set()
    out = out or default_cache(sources, levels)
    if all((out / f"{bleed_name(n, lv)}.json").is_file() for n, _ in sources for lv in levels):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bleed-", dir=out.parent))
    for name, directory in sources:
        write_bleed(name, directory, levels, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # all or nothing: a half-made set is never taken for a cached one
    return out


def bleed_set(level_db: int, out: Path | None = None) -> list[tuple[str, Path]]:
    """(name, directory) of every dialogue's bleed version at `level_db` (made if needed); the source dialogue
    is the name without its `.bleed…dB` suffix."""
    directory = make_bleed(out)
    return [(bleed_name(name, level_db), directory) for name, _ in dialogue_set()]


DUPLICATE_SHARE = 0.6  # a final repeating this share of an overlapping final of the other speaker duplicates it
DUPLICATE_SLACK_S = 0.3  # "overlapping": within this much of each other


def final_segments(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finals (wire-form dicts) as they end up: each replaced by its highest `segment.revised`, by start."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for e in events:
        if e["type"] in ("segment.final", "segment.revised") and e["text"].strip():
            key = (e["speaker"]["participantId"], e["seq"])
            if key not in latest or e.get("revision", 0) >= latest[key].get("revision", 0):
                latest[key] = e
    return sorted(latest.values(), key=lambda e: (e["start_s"], e["seq"]))


def duplicates(finals: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of unmarked finals of different speakers, overlapping in time, where one's words match at least
    DUPLICATE_SHARE of the other's: the same sentence under two names."""
    shown = [(e, tuple(normalize(e["text"]).split())) for e in finals if not e.get("crosstalk")]
    found = []
    for i, (a, wa) in enumerate(shown):
        for b, wb in shown[i + 1 :]:
            if a["speaker"]["participantId"] == b["speaker"]["participantId"] or not wa or not wb:
                continue
            if a["start_s"] > b["end_s"] + DUPLICATE_SLACK_S or b["start_s"] > a["end_s"] + DUPLICATE_SLACK_S:
                continue
            if (matched_words(wb, wa) >= DUPLICATE_SHARE * len(wa)
                    or matched_words(wa, wb) >= DUPLICATE_SHARE * len(wb)):
                found.append((a["text"], b["text"]))
    return found


def score_crosstalk(events: list[dict[str, Any]], truth: dict[str, Any]) -> dict[str, Any]:
    """One transcribed dialogue (`--channels-as-speakers`: speaker roles interviewer / candidate) against its
    ground truth: `duplicates` (see `duplicates`), `lost_turns` (ground-truth turns without an unmarked final of
    their speaker overlapping them), `marked` / `corrected` (finals marked cross-talk at once / by a revision),
    and `wer` per role (unmarked finals against the role's turns)."""
    finals = final_segments(events)
    shown = [e for e in finals if not e.get("crosstalk")]
    lost = [t["text"] for t in truth["turns"]
            if not any(e["speaker"]["role"] == t["speaker"] and e["start_s"] < t["end_s"] + DUPLICATE_SLACK_S
                       and e["end_s"] > t["start_s"] - DUPLICATE_SLACK_S for e in shown)]  # fmt: skip
    corrected = sum(1 for e in events if e["type"] == "segment.revised" and e.get("crosstalk"))
    marked = sum(1 for e in events if e["type"] == "segment.final" and e.get("crosstalk"))
    wer: dict[str, float | None] = {}
    refs: dict[str, tuple[str, str]] = {}
    for role in ("interviewer", "candidate"):
        ref = " ".join(t["text"] for t in truth["turns"] if t["speaker"] == role)
        hyp = " ".join(e["text"] for e in shown if e["speaker"]["role"] == role)
        refs[role] = (ref, hyp)
        wer[role] = corpus_wer([(ref, hyp)])
    return {"duplicates": duplicates(finals), "lost_turns": lost, "marked": marked, "corrected": corrected,
            "wer": wer, "pairs": refs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="directory to write (default: a cache under ~/.cache/interview-worker)")
    ap.add_argument("--levels", default=",".join(str(v) for v in LEVELS_DB), help="bleed levels in dB")
    args = ap.parse_args()
    levels = tuple(int(v) for v in args.levels.split(","))
    if any(v >= 0 for v in levels):
        ap.error("--levels: bleed levels are negative dB")
    print(make_bleed(args.out, levels))


if __name__ == "__main__":
    main()
