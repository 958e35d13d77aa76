"""Live guidance: the protected-topic detector on its held-out questions, `python -m pipeline classify-questions`,
guide-coverage matching on reworded guide questions, and the per-room `Guidance` component over scripted finals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters.embeddings_onnx import OnnxSentenceEmbedder
from pipeline.guidance import (
    QUESTION_SET,
    TOPICS,
    ProtectedTopicDetector,
    default_detector,
    detector_scores,
    load_question_set,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder() -> OnnxSentenceEmbedder:
    return OnnxSentenceEmbedder(threads=1)


def test_embeddings_are_unit_vectors_and_batch_invariant(embedder: OnnxSentenceEmbedder) -> None:
    texts = ["How old are you?", "What is your age?", "Tell me about a time you led a project.", "Can you work weekends?"]
    batch = embedder.embed(texts)
    assert batch.shape == (4, embedder.dim) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])  # padding to the batch's longest must not matter
    assert np.allclose(batch, one_by_one, atol=1e-3)
    sims = batch @ batch.T
    assert sims[0, 1] > 0.6 and sims[0, 1] > sims[0, 2] + 0.3  # paraphrases close, unrelated questions far
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_question_set_is_curated_as_documented() -> None:
    questions = load_question_set(QUESTION_SET)
    for topic in TOPICS:
        assert sum(q.topic == topic for q in questions) >= 20, topic
        assert any(q.topic == topic and q.split == "heldout" for q in questions), topic
    assert sum(q.topic is None for q in questions) >= 60
    assert {q.split for q in questions} == {"tune", "heldout"}
    texts = [q.text.lower() for q in questions]
    assert len(texts) == len(set(texts)), "a question in both parts would leak the held-out figures"


@pytest.mark.parametrize("jurisdiction", ["us", "eu"])
def test_detector_meets_targets_on_held_out_questions(embedder: OnnxSentenceEmbedder, jurisdiction: str) -> None:
    scores = detector_scores(embedder, load_question_set(QUESTION_SET), split="heldout", jurisdiction=jurisdiction)  # type: ignore[arg-type]
    assert scores["precision"] >= 0.9, scores
    assert scores["recall"] >= 0.9, scores


def test_salary_history_is_flagged_only_where_banned(embedder: OnnxSentenceEmbedder) -> None:
    q = ["What were you paid at your last job?", "What salary are you expecting for this role?"]
    us = default_detector(embedder, "us").classify(q)
    eu = default_detector(embedder, "eu").classify(q)
    assert [v.topic for v in us] == ["salary_history", None]
    assert [v.topic for v in eu] == [None, None]
    assert us[0].rephrase and "expecting" in us[0].rephrase


def test_every_flag_names_a_lawful_rephrasing(embedder: OnnxSentenceEmbedder) -> None:
    det = default_detector(embedder, "us")
    verdicts = det.classify(["Where are you from?", "Are you authorised to work in Spain?", "Are you married?",
                             "Tell me about a time you disagreed with a colleague.", "Can you work weekends?"])  # fmt: skip
    assert [v.topic for v in verdicts] == ["origin", None, "family", None, None]
    assert all((v.rephrase is not None) == (v.topic is not None) for v in verdicts)
    assert "authorised to work" in (verdicts[0].rephrase or "")


def test_unknown_jurisdiction_is_a_value_error(embedder: OnnxSentenceEmbedder) -> None:
    with pytest.raises(ValueError, match="jurisdiction"):
        ProtectedTopicDetector(embedder, load_question_set(QUESTION_SET), "fr")  # type: ignore[arg-type]


def test_classify_questions_command() -> None:
    stdin = "How old are you?\n\nCan you work weekends?\nWhat is your current salary?\n"
    out = subprocess.run([sys.executable, "-m", "pipeline", "classify-questions", "--jurisdiction", "us"],
                         input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)  # fmt: skip
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["How old are you?", "Can you work weekends?", "What is your current salary?"]
    assert [r["topic"] for r in rows] == ["age", None, "salary_history"]
    assert all(set(r) == {"text", "topic", "score", "rephrase"} for r in rows)
    assert rows[1]["rephrase"] is None and isinstance(rows[1]["score"], float)
    bad = subprocess.run([sys.executable, "-m", "pipeline", "classify-questions", "--jurisdiction", "mars"],
                         input="", capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "jurisdiction" in bad.stderr and "Traceback" not in bad.stderr
