"""What a pause's (speculative) decode spends its CPU on: prompt, word timestamps, beam, encoder window.

    python -m benchmarks.decode_parts [--dialogues 8] [--json PATH]

Each ground-truth turn of the dialogues (testing/dialogues.py; its speaker's channel, 0.3 s before to 0.08 s after
the turn, then 0.5 s of silence as the stream pads a pause's snapshot) and jfk's first 3 s are decoded with
faster-whisper as `LocalWhisper` decodes a final (beam 5, the conversation's previous 200 characters as the
prompt with the repetition penalty, word timestamps, the encoder window of `_window_frames`), then with one part
changed at a time (the first row is what `LocalWhisper` does now, the second what it did before it stopped
decoding the silence after a finished text). Times are the process's CPU time (one decoding thread), so other jobs on a shared machine
slow the wall clock but barely these figures; WER is of all the turns' texts against the ground truth. The
guards' second decodes (`LocalWhisper._transcribe`) are left out: they cost the same in every variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adapters.stt_whisper import LocalWhisper
from benchmarks.report import environment, format_environment, percentile, print_table, progress_printer
from pipeline.audio_file import read_audio
from pipeline.guards import COMPRESSION_RATIO_THRESHOLD, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD
from pipeline.transcript import SAMPLE_RATE
from testing.data import SHARED_DATA
from testing.dialogues import dialogue_set
from testing.text import wer

PAD = SAMPLE_RATE // 2  # the stream pads a pause's snapshot with silence up to where END_SILENCE_MS would close it
PROMPT_CHARS = 200  # StreamConfig.prompt_max_chars
GATES = {"vad_filter": False, "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
         "log_prob_threshold": LOGPROB_THRESHOLD, "no_speech_threshold": NO_SPEECH_THRESHOLD}  # as LocalWhisper's

progress = progress_printer("decode_parts")


def clips(n_dialogues: int) -> list[tuple[str, np.ndarray, str | None]]:
    """(ground-truth text, float audio, prompt) per turn, then jfk's first 3 s."""
    out = []
    for name, folder in dialogue_set()[:n_dialogues]:
        turns = json.loads((folder / f"{name}.json").read_text())["turns"]
        audio = read_audio(folder / f"{name}.stereo.wav", rate=SAMPLE_RATE)
        said = ""
        for t in turns:
            pcm = audio.channel(0 if t["speaker"] == "interviewer" else 1)
            a, b = max(0, int((t["start_s"] - 0.3) * SAMPLE_RATE)), int((t["end_s"] + 0.08) * SAMPLE_RATE)
            x = np.concatenate([pcm[a:b], np.zeros(PAD, np.int16)]).astype(np.float32) / 32768
            out.append((t["text"], x, said[-PROMPT_CHARS:].strip() or None))
            said += " " + t["text"]
    jfk = read_audio(SHARED_DATA / "jfk.flac", rate=SAMPLE_RATE).channel(0)[: 3 * SAMPLE_RATE]
    x = np.concatenate([jfk, np.zeros(PAD, np.int16)]).astype(np.float32) / 32768
    out.append(("And so my fellow Americans, ask not", x, None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogues", type=int, default=8, help="how many of the dialogues (8: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    env = environment()
    print(format_environment(env))
    lw = LocalWhisper()
    model = lw._whisper

    def decode(x: np.ndarray, prompt: str | None, beam: int, words: bool, frames: int | None,
               skip_tail: bool = True) -> tuple[float, str]:
        lw._local.frames = frames  # the encoder window LocalWhisper's model subclass trims to
        # as LocalWhisper._decode: the silence after the last word is not decoded as one more window
        lw._local.audio, lw._local.encoded, lw._local.skip = (x if skip_tail else None), None, False
        audio_s = x.size / SAMPLE_RATE
        t0 = time.process_time()
        try:
            segs, _info = model.transcribe(
                x, language="en", beam_size=beam, temperature=[0.0, 0.2, 0.4], condition_on_previous_text=False,
                initial_prompt=prompt, word_timestamps=words, without_timestamps=False,
                max_new_tokens=min(220, int(audio_s * 8) + 16), repetition_penalty=1.1 if prompt else 1.0, **GATES)
            text = " ".join(s.text.strip() for s in segs)  # the generator decodes: consume it inside the timing
        finally:
            lw._local.frames = lw._local.audio = lw._local.encoded = None
        return (time.process_time() - t0) * 1000, text

    def window(x: np.ndarray) -> int | None:
        return lw._frames(x.size / SAMPLE_RATE)

    def tight(x: np.ndarray) -> int:
        return int(max(5, np.ceil(x.size / SAMPLE_RATE + 1)) * 100)

    variants: dict[str, Callable[[np.ndarray, str | None], tuple[float, str]]] = {
        "final: beam 5, prompt, word timestamps, window >= 10 s": lambda x, p: decode(x, p, 5, True, window(x)),
        "... and the silence after the text decoded (before)": lambda x, p: decode(x, p, 5, True, window(x), False),
        "no prompt": lambda x, p: decode(x, None, 5, True, window(x)),
        "no word timestamps": lambda x, p: decode(x, p, 5, False, window(x)),
        "beam 1": lambda x, p: decode(x, p, 1, True, window(x)),
        "beam 3": lambda x, p: decode(x, p, 3, True, window(x)),
        "window audio + 1 s (>= 5 s)": lambda x, p: decode(x, p, 5, True, tight(x)),
    }
    data = clips(args.dialogues)
    progress(f"{len(data)} clips, audio p50 {statistics.median(x.size for _, x, _ in data) / SAMPLE_RATE:.2f} s")
    ms: dict[str, list[float]] = {k: [] for k in variants}
    texts: dict[str, list[str]] = {k: [] for k in variants}
    for i, (_ref, x, prompt) in enumerate(data):
        for name, fn in variants.items():  # interleaved: a slow spell of the machine hits every variant alike
            dt, text = fn(x, prompt)
            ms[name].append(dt)
            texts[name].append(text)
        if i % 10 == 9:
            progress(f"{i + 1}/{len(data)} clips")
    refs = " ".join(ref for ref, _, _ in data)
    base = statistics.mean(ms[next(iter(variants))])
    rows = [[name, percentile(v, 50), percentile(v, 90), statistics.mean(v), f"{100 * (statistics.mean(v) / base - 1):+.0f} %",
             wer(refs, " ".join(texts[name]))] for name, v in ms.items()]  # fmt: skip
    print(f"\n{len(data)} clips (dialogue turns + 0.5 s of silence, jfk 3 s); CPU ms per decode (process time)")
    print_table(rows, ["decode", "CPU ms p50", "p90", "mean", "mean vs final", "WER"])
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows, "ms": ms}, indent=1))
        print(f"JSON written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
