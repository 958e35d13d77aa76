"""The interview's own vocabulary: rare terms (products, libraries, acronyms) that bias recognition for one interview.

Whisper spells a term it never saw as the words it sounds like ("Cuban eat clusters" for Kubernetes clusters,
"both gums" for Postgres); told the term in its prompt, it writes it (`benchmarks.vocabulary`). The terms come from
the job (its skills, and the term-like words of its description), the interview's questions and the candidate's CV
skills (`interview_terms`); `hint_text` is the text an engine puts before the prompt of every decode of that
interview (faster-whisper: token ids before the previous text, `adapters.stt_whisper`; the OpenAI API: its
`prompt` parameter).

A prompt can also lead the decoder to write a term nobody said; `pipeline.guards.hint_only` and
`pipeline.guards.doubtful_hint` find those decodes, and the engines decode them again without the vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# longest term kept (characters, words): a skill is a name, not a sentence
MAX_TERM_CHARS = 40
MAX_TERM_WORDS = 4
DEFAULT_MAX_TERMS = 30

# a word of free text that names a thing rather than being English: inner capitals (PyTorch, gRPC, FastAPI), an
# acronym (CUDA, AWS), digits or a programming symbol (k8s, C++, C#, Node.js)
_TERM_RE = re.compile(r"""
    ^(?: [A-Za-z][a-z0-9]*[A-Z][A-Za-z0-9]*      # inner capital: PyTorch, gRPC, iOS, FastAPI
       | [A-Z][A-Z0-9]{1,9}s?                    # acronym: CUDA, AWS, K8S, APIs
       | [A-Za-z]+[0-9][A-Za-z0-9]*              # letters then digits: k8s, S3, EC2
       | [A-Za-z][A-Za-z0-9]*(?:[+#]+|\.[A-Za-z]{2,}) # C++, C#, F#, Node.js, Vue.js
    )$""", re.VERBOSE)
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+#.\-]*")
# acronyms that are English words when capitalised for emphasis, or pronouns
_NOT_TERMS = frozenset({"I", "OK", "A", "AN", "THE", "AND", "OR", "TV", "ID", "IDS"})


def clean_term(term: str) -> str | None:
    """`term` with its spacing collapsed, or None when it is no term (empty, too long, no letter)."""
    t = " ".join(str(term).split()).strip(" ,;:.")
    if not t or len(t) > MAX_TERM_CHARS or len(t.split()) > MAX_TERM_WORDS or not any(c.isalpha() for c in t):
        return None
    return t


def terms_in_text(text: str) -> list[str]:
    """The term-like words of free text (a job description, a question), in order: inner capitals, acronyms,
    letters with digits, C++ / Node.js, and capitalised words inside a sentence (Kafka, Terraform). Lower-case
    words and a sentence's first word are left out: Whisper knows English."""
    found = []
    text = text or ""
    for m in _WORD_RE.finditer(text):
        word = m.group(0).rstrip(".-")
        if not word or word in _NOT_TERMS:
            continue
        before = text[:m.start()].rstrip()
        inside = bool(before) and before[-1] not in ".!?:;\"'(\n"
        if _TERM_RE.match(word) or (inside and word[0].isupper() and word[1:].islower() and len(word) > 2):
            found.append(word)
    return found


def interview_terms(*, job_skills: Iterable[str] = (), candidate_skills: Iterable[str] = (),
                    expected_keywords: Iterable[str] = (), texts: Iterable[str] = (),
                    max_terms: int = DEFAULT_MAX_TERMS) -> tuple[str, ...]:
    """The vocabulary of one interview: at most `max_terms` distinct terms (case-insensitively), in this order of
    precedence: the job's skills, the candidate's CV skills, the questions' expected keywords, then the term-like
    words of `texts` (the job description, the questions). Deterministic: the same interview gives the same
    tuple, so the same decode."""
    if max_terms < 0:
        raise ValueError("max_terms must be >= 0")
    seen: set[str] = set()
    terms: list[str] = []
    candidates = [*job_skills, *candidate_skills, *expected_keywords, *(w for t in texts for w in terms_in_text(t))]
    for raw in candidates:
        if len(terms) >= max_terms:
            break
        term = clean_term(raw)
        if term is None or term.casefold() in seen:
            continue
        seen.add(term.casefold())
        terms.append(term)
    return tuple(terms)


def hint_text(terms: Iterable[str]) -> str:
    """The text that tells the decoder the interview's terms: "Kubernetes, PyTorch, gRPC." (empty without terms).
    A list, not a sentence: a sentence would be continued, a list only makes its words likely."""
    listed = ", ".join(t for t in terms if t)
    return f"{listed}." if listed else ""


def parse_terms(text: str) -> tuple[str, ...]:
    """Terms from a comma-separated list (the command line's `--vocabulary`), cleaned and deduplicated."""
    return interview_terms(job_skills=text.split(","), max_terms=10_000)
