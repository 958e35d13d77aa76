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


def _term_words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def term_count(text: str, term: str) -> int:
    """How often `term` occurs in `text` as whole words, case and punctuation aside ("scikit-learn" is the words
    "scikit learn"; "Kubernetes'" counts as "kubernetes")."""
    words, want = _term_words(text), _term_words(term)
    n = len(want)
    return sum(words[i:i + n] == want for i in range(len(words) - n + 1)) if n else 0


def term_scores(reference: str, hypothesis: str, terms: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Per vocabulary: `said` (occurrences of the terms in the reference), `found` (of those, how many the
    hypothesis has: per term the smaller count) and `inserted` (occurrences in the hypothesis beyond the
    reference's: a term written where it was not said)."""
    said = found = inserted = 0
    for term in terms:
        r, h = term_count(reference, term), term_count(hypothesis, term)
        said += r
        found += min(r, h)
        inserted += max(0, h - r)
    return {"said": said, "found": found, "inserted": inserted}
