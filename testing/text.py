"""Transcripts and word error rate, the one way tests and benchmarks score text.

WER is computed after Whisper's English normalisation (`whisper-normalizer`, the normaliser the Whisper
papers report with) by `jiwer`; both are imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def _normalizer() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English normalisation: lower case, no punctuation, spelled-out forms made standard."""
    return _normalizer()(text)


def wer(ref: str, hyp: str) -> float:
    """Word error rate of `hyp` against `ref`, both normalised."""
    import jiwer

    return float(jiwer.wer(normalize(ref), normalize(hyp)))


def corpus_wer(pairs: list[tuple[str, str]]) -> float | None:
    """WER over (reference, hypothesis) pairs after normalisation; None without references."""
    import jiwer

    refs, hyps = [], []
    for ref, hyp in pairs:
        r = normalize(ref).strip()
        if r:
            refs.append(r)
            hyps.append(normalize(hyp).strip())
    if not refs:
        return None
    return float(jiwer.wer(refs, hyps))


def transcript_of(events: list[dict[str, Any]], *, revised: bool = True) -> str:
    """Finals (wire-form dicts) in stream order, each replaced by its latest `segment.revised` when `revised`;
    segments are told apart by speaker (`speaker.participantId`, when the events carry it) and `seq`."""
    latest: dict[tuple[str | None, int], dict[str, Any]] = {}
    for e in events:
        if e["type"] == "segment.final" or (revised and e["type"] == "segment.revised"):
            key = ((e.get("speaker") or {}).get("participantId"), e["seq"])
            if key not in latest or (e.get("revision") or 0) >= (latest[key].get("revision") or 0):
                latest[key] = e
    finals = sorted(latest.values(), key=lambda e: (e["start_s"], e["seq"]))
    return " ".join(e["text"].strip() for e in finals)
