"""The dialogue set streamed accuracy is measured on: the two shared dialogues plus six more made here.

One word is 0.011 of a 90-word dialogue's WER and tiny.en flips a few words between near-identical decodes, so two
dialogues cannot tell a +0.02 gap from noise; eight can (about 700 words). The six extra dialogues are synthesized
with the shared generator (`../shared/tools/make_dialogues.py`, espeak-ng: interviewer `en-us`, candidate
`en-gb+f3`, the same voices and pauses as the shared ones) into a cache directory, once per version of their text.

    python -m testing.dialogues [--out DIR]     # make them (prints the directory)

`DIGITS` is a second set, of spoken digit strings and short answers (`digit_dialogue_set`), for revisions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from testing.data import SHARED_DATA, SHARED_DIALOGUES

# name -> (topic keywords, turns of (speaker, text, sentiment label))
Dialogues = dict[str, tuple[list[str], list[tuple[str, str, str]]]]

EXTRA: Dialogues = {
    "backend_scaling": (["postgres", "latency", "cache", "replica", "migration"], [
        ("interviewer", "Tell me about the largest system you have scaled.", "neutral"),
        ("candidate", "I led the move of our order service from one Postgres instance to a primary with three read "
                      "replicas, and latency fell by half.", "positive"),
        ("interviewer", "How did you keep the cache consistent?", "neutral"),
        ("candidate", "Writes invalidate the cache key in the same transaction, and readers fall back to the "
                      "primary when a replica lags.", "neutral"),
        ("interviewer", "Did anything go wrong during the migration?", "neutral"),
        ("candidate", "One migration locked a large table for ten minutes. It was a painful outage and customers "
                      "were angry.", "negative"),
    ]),
    "frontend_team": (["react", "accessibility", "design", "testing", "performance"], [
        ("interviewer", "What does a good week look like for you on the frontend team?", "neutral"),
        ("candidate", "I pair with our designer in the morning, then build React components and write tests "
                      "before lunch.", "neutral"),
        ("interviewer", "How do you approach accessibility?", "neutral"),
        ("candidate", "Every component ships with keyboard support and screen reader labels. I love seeing real "
                      "users benefit from it.", "positive"),
        ("interviewer", "And performance problems?", "neutral"),
        ("candidate", "Our bundle grew terribly large last year and the app felt slow and frustrating, so we split "
                      "it by route.", "negative"),
    ]),
    "data_pipeline": (["kafka", "schema", "warehouse", "batch", "monitoring"], [
        ("interviewer", "Can you walk me through the data pipeline you maintain?", "neutral"),
        ("candidate", "Events arrive through Kafka, we validate each schema, and a nightly batch job loads them "
                      "into the warehouse.", "neutral"),
        ("interviewer", "What happens when a schema changes?", "neutral"),
        ("candidate", "A bad schema change once broke every dashboard for a day. It was stressful and the analysts "
                      "were upset.", "negative"),
        ("interviewer", "What did you change afterwards?", "neutral"),
        ("candidate", "We added contract tests and better monitoring, and I am happy to say nothing has broken "
                      "since.", "positive"),
    ]),
    "leadership": (["mentoring", "roadmap", "hiring", "conflict", "feedback"], [
        ("interviewer", "How would you describe your leadership style?", "neutral"),
        ("candidate", "I try to give clear goals and honest feedback, and I spend an hour each week mentoring "
                      "every engineer.", "positive"),
        ("interviewer", "Tell me about a conflict on your team.", "neutral"),
        ("candidate", "Two seniors disagreed about the roadmap and stopped talking to each other. It was a "
                      "miserable month for everyone.", "negative"),
        ("interviewer", "How was it resolved?", "neutral"),
        ("candidate", "We wrote down both proposals, invited the product manager, and agreed on a plan within one "
                      "meeting.", "neutral"),
    ]),
    "ml_platform": (["model", "training", "gpu", "deployment", "drift"], [
        ("interviewer", "What have you built for machine learning teams?", "neutral"),
        ("candidate", "I built a training platform that schedules jobs on shared GPU nodes, and researchers really "
                      "enjoy using it.", "positive"),
        ("interviewer", "How do models reach production?", "neutral"),
        ("candidate", "Each model is packaged in a container, tested against a holdout set, and deployed behind a "
                      "feature flag.", "neutral"),
        ("interviewer", "How do you watch them once they are live?", "neutral"),
        ("candidate", "We track input drift daily. Last spring drift went unnoticed for weeks, which was a terrible "
                      "failure.", "negative"),
    ]),
    "devops_oncall": (["kubernetes", "alerts", "terraform", "rollback", "oncall"], [
        ("interviewer", "What is your experience with on call duty?", "neutral"),
        ("candidate", "I am on call one week in six for a Kubernetes platform that runs about two hundred "
                      "services.", "neutral"),
        ("interviewer", "What was your worst night?", "neutral"),
        ("candidate", "A broken Terraform change deleted our load balancer. The alerts were noisy and the night was "
                      "awful.", "negative"),
        ("interviewer", "What did you learn from it?", "neutral"),
        ("candidate", "We now plan every change in review and can roll back in one click. The team is much calmer "
                      "and proud of it.", "positive"),
    ]),
}  # fmt: skip

# Spoken digit strings and short answers, where a revision's extra context can insert or drop a digit: a real
# recording of "one zero zero zero one, nine oh two one oh, zero one eight zero three" got a revision with an
# extra "0" and without an "oh".
DIGITS: Dialogues = {
    "reference_numbers": (["reference", "number", "office", "extension"], [
        ("interviewer", "Could you read me the reference number on your application?", "neutral"),
        ("candidate", "One zero zero zero one, nine oh two one oh, zero one eight zero three.", "neutral"),
        ("interviewer", "And the extension of your current office?", "neutral"),
        ("candidate", "Four four seven, two nine one.", "neutral"),
        ("interviewer", "How many years have you worked there?", "neutral"),
        ("candidate", "Twelve.", "neutral"),
    ]),
    "phone_and_dates": (["phone", "start", "notice", "team"], [
        ("interviewer", "Which phone number should we call you on?", "neutral"),
        ("candidate", "Zero seven seven zero, nine oh oh, one two three four.", "neutral"),
        ("interviewer", "How many weeks of notice do you have?", "neutral"),
        ("candidate", "Eight.", "neutral"),
        ("interviewer", "How large is your team?", "neutral"),
        ("candidate", "Five engineers and two testers.", "neutral"),
    ]),
    "codes_and_counts": (["code", "servers", "regions", "releases"], [
        ("interviewer", "What was the incident code you mentioned?", "neutral"),
        ("candidate", "Three one four one five nine two six.", "neutral"),
        ("interviewer", "How many servers did you run?", "neutral"),
        ("candidate", "About two hundred and forty, in six regions.", "neutral"),
        ("interviewer", "And releases per week?", "neutral"),
        ("candidate", "Two or three.", "neutral"),
    ]),
}  # fmt: skip


# Dialogues full of rare product names, libraries and acronyms, for the interview's vocabulary (pipeline.vocabulary):
# `keywords` is the vocabulary the interview gives (its job's and the candidate's skills); some of its terms are
# never said, so an inserted term shows (benchmarks.vocabulary).
VOCABULARY: Dialogues = {
    "platform_infra": (["Kubernetes", "Terraform", "Helm", "Istio", "Prometheus", "Grafana", "Ansible", "ArgoCD"], [
        ("interviewer", "Which tools does your platform team use every day?", "neutral"),
        ("candidate", "We run Kubernetes clusters provisioned with Terraform, and every service ships as a Helm "
                      "chart.", "neutral"),
        ("interviewer", "How do you monitor them?", "neutral"),
        ("candidate", "Prometheus scrapes the metrics and we keep our dashboards in Grafana.", "neutral"),
        ("interviewer", "Have you used a service mesh?", "neutral"),
        ("candidate", "Yes, we tried Istio last year but removed it because it was too heavy for us.", "neutral"),
    ]),
    "ml_stack": (["PyTorch", "CUDA", "ONNX", "TensorFlow", "scikit-learn", "NumPy", "Hugging Face", "JAX"], [
        ("interviewer", "What is your machine learning stack?", "neutral"),
        ("candidate", "I train models in PyTorch on CUDA machines and export them to ONNX for serving.", "neutral"),
        ("interviewer", "Do you still use TensorFlow?", "neutral"),
        ("candidate", "Not anymore. For classic models I prefer scikit-learn, and NumPy for everything else.",
         "neutral"),
        ("interviewer", "Where do your pretrained models come from?", "neutral"),
        ("candidate", "Mostly from Hugging Face, after we check their licences.", "neutral"),
    ]),
    "backend_services": (["gRPC", "Kafka", "FastAPI", "Postgres", "Redis", "Celery", "RabbitMQ", "GraphQL",
                          "DynamoDB"], [
        ("interviewer", "How do your backend services talk to each other?", "neutral"),
        ("candidate", "Internal calls use gRPC, and events go through Kafka topics.", "neutral"),
        ("interviewer", "Which frameworks do you write services in?", "neutral"),
        ("candidate", "New services use FastAPI, with Postgres as the main database and Redis as a cache.",
         "neutral"),
        ("interviewer", "Do you run any background jobs?", "neutral"),
        ("candidate", "We run Celery workers, and a few old jobs still read from RabbitMQ.", "neutral"),
    ]),
    "frontend_mobile": (["TypeScript", "Svelte", "Kotlin", "Jetpack Compose", "GraphQL", "Webpack", "Vite",
                         "Flutter"], [
        ("interviewer", "What languages does your team write?", "neutral"),
        ("candidate", "The web app is TypeScript with Svelte, and the Android app is Kotlin with Jetpack Compose.",
         "neutral"),
        ("interviewer", "How do the clients fetch their data?", "neutral"),
        ("candidate", "Both clients query one GraphQL gateway.", "neutral"),
        ("interviewer", "Did you change the build tooling?", "neutral"),
        ("candidate", "We replaced Webpack with Vite and our builds became four times faster.", "neutral"),
    ]),
}  # fmt: skip
# An interview for live guidance: guide questions asked in other words, one question not in the guide (a lawful
# near-miss: "Can you work weekends?") and two protected-topic questions (age, family).
GUIDANCE: Dialogues = {
    "guidance_protected": (["kafka", "ledger", "review"], [
        ("interviewer", "Can you walk me through a distributed system you have built?", "neutral"),
        ("candidate", "I built a payments ledger on Kafka with three services.", "neutral"),
        ("interviewer", "How old are you, if you don't mind me asking?", "neutral"),
        ("candidate", "I would rather not say.", "neutral"),
        ("interviewer", "Can you work weekends?", "neutral"),
        ("candidate", "Yes, now and then.", "neutral"),
        ("interviewer", "Are you married, or planning to have children?", "neutral"),
        ("candidate", "I prefer to keep that private.", "neutral"),
        ("interviewer", "What do you look for when you review a colleague's code?", "neutral"),
        ("candidate", "Tests first, then clear names and small functions.", "neutral"),
    ]),
}  # fmt: skip
# ... and the guide it is asked from (the interview's questions: id, text, category)
GUIDANCE_GUIDE = [("q1", "Tell me about a distributed system you designed.", "system design"),
                  ("q2", "Describe a production incident you led and what you learned.", "operations"),
                  ("q3", "How do you review a teammate's code?", "collaboration")]


def generator() -> Path:
    """The shared dialogue generator script (fails loudly when it or espeak-ng is missing)."""
    path = SHARED_DATA.parent / "tools" / "make_dialogues.py"
    if not path.is_file():
        raise RuntimeError(f"dialogue generator missing: {path}")
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: apt-get install espeak-ng (see .ci/run)")
    return path


def _version(dialogues: Dialogues) -> str:
    return hashlib.sha256(json.dumps(dialogues, sort_keys=True).encode()).hexdigest()[:12]


def default_cache(dialogues: Dialogues = EXTRA) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "interview-worker" / f"dialogues-{_version(dialogues)}"


def make_extra(out: Path | None = None, dialogues: Dialogues = EXTRA) -> Path:
    """Synthesize `dialogues` (default: the extra ones) into `out` (default: a per-version cache) unless already
    there."""
    out = out or default_cache(dialogues)
    if all((out / f"{name}.json").is_file() for name in dialogues):
        return out
    make: dict[str, Any] = runpy.run_path(str(generator()), run_name="make_dialogues")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dialogues-", dir=out.parent))
    for k, (name, (keywords, turns)) in enumerate(dialogues.items()):
        make["build"](name, {"keywords": keywords, "turns": turns}, str(tmp), None, seed=10 + k)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # all or nothing: a half-made set is never taken for a cached one
    return out


def dialogue_set(out: Path | None = None) -> list[tuple[str, Path]]:
    """(name, directory) of every dialogue: the shared ones, then the extra ones (made if needed).

    Each directory holds `<name>.wav` (mono mix), `<name>.stereo.wav` and `<name>.json` (ground truth)."""
    extra = make_extra(out)
    return [(name, SHARED_DATA) for name in SHARED_DIALOGUES] + [(name, extra) for name in EXTRA]


def vocabulary_dialogue_set(out: Path | None = None) -> list[tuple[str, Path]]:
    """(name, directory) of the dialogues of rare terms (`VOCABULARY`), made if needed."""
    folder = make_extra(out, VOCABULARY)
    return [(name, folder) for name in VOCABULARY]


def digit_dialogue_set(out: Path | None = None) -> list[tuple[str, Path]]:
    """(name, directory) of the dialogues of spoken digit strings and short answers (`DIGITS`), made if needed."""
    folder = make_extra(out, DIGITS)
    return [(name, folder) for name in DIGITS]


def guidance_dialogue(out: Path | None = None) -> Path:
    """The live-guidance dialogue (`GUIDANCE`), made if needed: its directory (`guidance_protected.*`)."""
    return make_extra(out, GUIDANCE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help=f"directory to write (default {default_cache()})")
    args = ap.parse_args()
    print(make_extra(args.out))


if __name__ == "__main__":
    main()
