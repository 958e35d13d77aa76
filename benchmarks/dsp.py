"""DSP core benchmark: our resampler vs soxr HQ vs scipy resample_poly, our VAD vs webrtcvad vs Silero, and
the whole per-participant path (downmix + resample + VAD + segmenter).

    python -m benchmarks.dsp [--json PATH] [--rounds N]

Times are medians of individually timed calls, competitors interleaved round by round on the same audio, so
that load from other processes hits them alike. Progress goes to stderr; the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import soxr
import webrtcvad
from scipy.io import wavfile

from benchmarks.report import environment, format_environment, print_table, progress_printer
from pipeline.dsp import FrontEnd, Resampler, Vad
from testing.data import SHARED_DATA
from testing.data import SHARED_DIALOGUES as DIALOGUES

DATA = SHARED_DATA
CHUNK = 960  # 20 ms at 48 kHz
FRAME = 320  # 20 ms at 16 kHz


progress = progress_printer("dsp")


def load(name: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    wav, js = DATA / f"{name}.wav", DATA / f"{name}.json"
    if not wav.exists() or not js.exists():
        raise SystemExit(f"test audio missing: {wav} (expected the shared data at ../shared/data)")
    rate, x = wavfile.read(wav)
    if rate != 48000 or x.dtype != np.int16 or x.ndim != 1:
        raise SystemExit(f"{wav}: expected 48 kHz mono int16")
    return x, json.loads(js.read_text())["turns"]


def time_calls(
    fns: dict[str, Callable[[int], object]], n_items: int, rounds: int, per_round: int
) -> dict[str, float]:
    """Median per-call time in µs. Each round runs `per_round` consecutive items through every competitor
    in turn (item i -> fn(i)), timing every call."""
    samples: dict[str, list[int]] = {k: [] for k in fns}
    clock = time.perf_counter_ns
    pos = 0
    for _ in range(rounds):
        idx = [(pos + i) % n_items for i in range(per_round)]
        pos += per_round
        for name, fn in fns.items():
            out = samples[name]
            for i in idx:
                t0 = clock()
                fn(i)
                out.append(clock() - t0)
    return {k: float(np.median(v)) / 1000.0 for k, v in samples.items()}


# ---------------------------------------------------------------- resampler


def tone_db(run: Callable[[np.ndarray], np.ndarray], f: float, rate: int = 48000) -> float:
    t = np.arange(rate // 2) / rate
    x = (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    y = run(x).astype(np.float64)
    mid = y[len(y) // 5 : -len(y) // 5]
    return 20 * math.log10(math.sqrt(np.mean(mid**2)) / (0.5 / math.sqrt(2)) + 1e-300)


def ours_oneshot(x: np.ndarray) -> np.ndarray:
    r = Resampler(48000, 16000)
    return np.concatenate([r.process(x), r.flush()])


def soxr_oneshot(x: np.ndarray) -> np.ndarray:
    return soxr.resample(x, 48000, 16000, quality="HQ")


def held_back_ms(push: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    """Streaming latency: input pushed in 20 ms chunks minus output received, in ms, after 1 s."""
    got = sum(len(push(x[i : i + CHUNK])) for i in range(0, 48000, CHUNK))
    return (16000 - got) / 16.0


def bench_resampler(audio: np.ndarray, rounds: int) -> dict[str, Any]:
    chunks = [np.ascontiguousarray(audio[i : i + CHUNK]) for i in range(0, len(audio) - CHUNK + 1, CHUNK)]
    chunks_f = [c.astype(np.float64) for c in chunks]
    ours = Resampler(48000, 16000)
    sx = soxr.ResampleStream(48000, 16000, 1, dtype="int16", quality="HQ")
    progress(f"resampler timing: {rounds} rounds over {len(chunks)} chunks")
    times = time_calls(
        {
            "ours": lambda i: ours.process(chunks[i]),
            "soxr": lambda i: sx.resample_chunk(chunks[i]),
            "scipy": lambda i: scipy.signal.resample_poly(chunks_f[i], 1, 3),
        },
        len(chunks),
        rounds,
        250,
    )
    progress("alias rejection: tones 8.2-23 kHz")
    freqs = np.linspace(8200.0, 23000.0, 38)
    ours_alias = max(tone_db(ours_oneshot, f) for f in freqs)
    soxr_alias = max(tone_db(soxr_oneshot, f) for f in freqs)
    scipy_alias = max(
        tone_db(lambda x: scipy.signal.resample_poly(x.astype(np.float64), 1, 3), f) for f in freqs
    )
    pass_ours = max(abs(tone_db(ours_oneshot, f)) for f in np.linspace(50.0, 7000.0, 30))
    delay_ours = held_back_ms(Resampler(48000, 16000).process, audio)
    sx2 = soxr.ResampleStream(48000, 16000, 1, dtype="int16", quality="HQ")
    delay_soxr = held_back_ms(sx2.resample_chunk, audio)
    return {
        "ours_us": times["ours"],
        "soxr_hq_us": times["soxr"],
        "scipy_resample_poly_us": times["scipy"],
        "ratio_vs_soxr": times["ours"] / times["soxr"],
        "ours_alias_db": ours_alias,
        "soxr_alias_db": soxr_alias,
        "ours_delay_ms": delay_ours,
        "soxr_delay_ms": delay_soxr,
        "scipy_alias_db": scipy_alias,
        "ours_passband_dev_db": pass_ours,
    }


# ---------------------------------------------------------------- VAD


def labels(turns: list[dict[str, Any]], n_frames: int) -> np.ndarray:
    centre = (np.arange(n_frames) * FRAME + FRAME / 2) / 16000
    lab = np.zeros(n_frames, bool)
    for t in turns:
        lab |= (centre >= t["start_s"]) & (centre < t["end_s"])
    return lab


def f1(pred: np.ndarray, lab: np.ndarray) -> float:
    tp = int(np.sum(pred & lab))
    return 2 * tp / (2 * tp + int(np.sum(pred & ~lab)) + int(np.sum(~pred & lab)))


def to16k(x: np.ndarray) -> np.ndarray:
    r = Resampler(48000, 16000)
    return np.concatenate([r.process(x), r.flush()])


def vad_decisions(kind: str, frames: list[np.ndarray], frames_b: list[bytes], mode: int = 3) -> np.ndarray:
    if kind.startswith("webrtc"):
        v = webrtcvad.Vad(mode)
        return np.array([v.is_speech(b, 16000) for b in frames_b], bool)
    ours = Vad(kind)
    return np.array([ours.process(f) for f in frames], bool)


def bench_vad(rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    result: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    timing_frames: list[np.ndarray] = []
    for cond, suffix in (("clean", ""), ("snr10", ".snr10")):
        scores: dict[str, list[float]] = {}
        for name in DIALOGUES:
            x, turns = load(name + suffix)
            y = to16k(x)
            n = len(y) // FRAME
            frames = [np.ascontiguousarray(y[i * FRAME : (i + 1) * FRAME]) for i in range(n)]
            frames_b = [f.tobytes() for f in frames]
            if cond == "snr10":
                timing_frames = frames
            lab = labels(turns, n)
            progress(f"vad accuracy: {name}{suffix}")
            for kind in ("webrtc", "hybrid", "silero"):
                scores.setdefault(kind, []).append(f1(vad_decisions(kind, frames, frames_b), lab))
            for mode in range(3):
                scores.setdefault(f"webrtc_mode{mode}", []).append(
                    f1(vad_decisions("webrtc", frames, frames_b, mode), lab)
                )
        result[cond] = {
            "webrtcvad_f1": float(np.mean(scores["webrtc"])),
            "ours_f1": float(np.mean(scores["hybrid"])),
            "silero_f1": float(np.mean(scores["silero"])),
        }
        extra[cond] = {k: float(np.mean(v)) for k, v in scores.items() if k.startswith("webrtc_mode")}
    progress("vad timing")
    w = webrtcvad.Vad(3)
    ours, sil = Vad("hybrid"), Vad("silero")
    fb = [f.tobytes() for f in timing_frames]
    times = time_calls(
        {
            "webrtcvad": lambda i: w.is_speech(fb[i], 16000),
            "ours": lambda i: ours.process(timing_frames[i]),
            "silero": lambda i: sil.process(timing_frames[i]),
        },
        len(timing_frames),
        max(2, rounds // 4),
        500,
    )
    result["us_per_frame"] = times
    return result, extra


# ---------------------------------------------------------------- whole path


def bench_path(audio: np.ndarray, rounds: int) -> dict[str, float]:
    """FrontEnd.push per 20 ms WebRTC frame: 48 kHz interleaved stereo (the voice on both channels)."""
    stereo = np.ascontiguousarray(np.repeat(audio, 2))
    frames = [stereo[i : i + 2 * CHUNK] for i in range(0, len(stereo) - 2 * CHUNK + 1, 2 * CHUNK)]
    out = {}
    for kind in ("hybrid", "webrtc", "silero"):
        progress(f"whole path timing: vad={kind}")
        fe = FrontEnd(48000, 2, vad=kind)
        # streaming is stateful: feed frames in order, several passes of the whole dialogue
        samples: list[int] = []
        passes = max(1, rounds // 20) if kind != "silero" else 1
        for _ in range(passes):
            for f in frames:
                t0 = time.perf_counter_ns()
                fe.push(f)
                samples.append(time.perf_counter_ns() - t0)
        out[kind] = float(np.median(samples)) / 1000.0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--rounds", type=int, default=40, help="timing rounds (default 40)")
    args = ap.parse_args(argv)

    env = environment()
    audio, _ = load(DIALOGUES[0])
    rs = bench_resampler(audio, args.rounds)
    vad, vad_extra = bench_vad(args.rounds)
    path = bench_path(audio, args.rounds)
    result = {
        "resampler": rs,
        "vad": vad,
        "path_us_per_frame": path["hybrid"],
        "path_us_per_frame_by_vad": path,
        "vad_webrtc_other_modes_f1": vad_extra,
        "environment": env,
    }

    print(format_environment(env))
    print()
    print("Resampler, 48 kHz -> 16 kHz, per 20 ms chunk (960 samples), streaming")
    print_table(
        [
            ["ours (Cython polyphase)", rs["ours_us"], rs["ours_alias_db"], rs["ours_delay_ms"]],
            ["soxr HQ (ResampleStream)", rs["soxr_hq_us"], rs["soxr_alias_db"], rs["soxr_delay_ms"]],
            ["scipy resample_poly per chunk", rs["scipy_resample_poly_us"], rs["scipy_alias_db"], 0.0],
        ],
        ["resampler", "µs/chunk (median)", "worst alias 8.2-23 kHz (dB)", "held back (ms)"],
    )
    print(
        f"ours/soxr time ratio {rs['ratio_vs_soxr']:.2f}; ours passband deviation to 7 kHz {rs['ours_passband_dev_db']:.4f} dB"
    )
    print()
    print("VAD, 20 ms frames at 16 kHz, frame F1 against the dialogue turns (mean of 2 dialogues)")
    us = vad["us_per_frame"]
    print_table(
        [
            [
                "webrtcvad (mode 3)",
                vad["clean"]["webrtcvad_f1"],
                vad["snr10"]["webrtcvad_f1"],
                us["webrtcvad"],
            ],
            ["ours (hybrid)", vad["clean"]["ours_f1"], vad["snr10"]["ours_f1"], us["ours"]],
            [
                "Silero v6 (onnxruntime, 1 thread)",
                vad["clean"]["silero_f1"],
                vad["snr10"]["silero_f1"],
                us["silero"],
            ],
        ]
        + [
            [
                f"webrtcvad (mode {m})",
                vad_extra["clean"][f"webrtc_mode{m}"],
                vad_extra["snr10"][f"webrtc_mode{m}"],
                None,
            ]
            for m in range(3)
        ],
        ["VAD", "F1 clean", "F1 10 dB SNR", "µs/frame (median)"],
    )
    print()
    print("Whole path per 20 ms WebRTC frame (48 kHz stereo in: downmix + resample + VAD + segmenter)")
    print_table(
        [[f"FrontEnd(vad={k!r})", v, 20000.0 / v] for k, v in path.items()],
        ["path", "µs/frame (median)", "× real time"],
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
