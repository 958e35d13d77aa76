"""How every benchmark program reports: the environment, Markdown tables, percentiles, progress lines.

Benchmarks print the environment (versions, CPU, cores, threads) above their table and embed it in their
``--json`` output so numbers from different machines are never compared blind. Tables go to stdout, progress
to stderr. (What tests use too, such as the shared test data, lives in the `testing` package.)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

_PACKAGES = (
    "numpy",
    "scipy",
    "Cython",
    "soxr",
    "webrtcvad-wheels",
    "onnxruntime",
    "faster-whisper",
    "ctranslate2",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ("sse4_2", "avx", "avx2", "fma", "avx512f") if x in have]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    """Python, platform, CPU model and flags, core count, thread limits and package versions."""
    versions = {p: _version(p) for p in (*_PACKAGES, *extra_packages)}
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": load,
        "threads_env": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ
        },
        "packages": {k: v for k, v in versions.items() if v is not None},
    }


def format_environment(env: dict[str, Any]) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    return (
        f"Python {env['python']} on {env['platform']}\n"
        f"CPU: {env['cpu']} ({env['cores']} cores, affinity {env['affinity']}, "
        f"flags {' '.join(env['cpu_flags'])}), load {env['loadavg']}\n"
        f"Packages: {pk}"
    )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], file: TextIO | None = None) -> None:
    """Print a Markdown table (pasteable into README.md); floats get 3 significant digits."""
    out = file if file is not None else sys.stdout
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |", file=out)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |", file=out)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in 0..100; NaN when there are no values.

    The one definition every benchmark uses, so p50/p95 mean the same thing in every table.
    """
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def progress_printer(program: str) -> Callable[[str], None]:
    """A `progress(msg)` for one benchmark program: `[program HH:MM:SS] msg` on stderr, flushed at once."""

    def progress(msg: str) -> None:
        print(f"[{program} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return progress


def run_program(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
                argv: list[str] | None = None) -> None:
    """A benchmark's `main`: parse `argv` (its parser has `--json`), log warnings to stderr, run `run(args)` on an
    event loop, and write what it returns to `--json` when given."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def abba(a: str, b: str, pairs: int) -> list[str]:
    """`pairs` pairs of rounds in ABBA order (a, b, b, a, a, b, ...): a drift of the machine over the run then
    weighs on both sides alike, where a, b, a, b would always give b the later slot."""
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    return [x for i in range(pairs) for x in ((a, b) if i % 2 == 0 else (b, a))]


def median_summary(values: Sequence[float], *, resamples: int = 2000, seed: int = 12) -> dict[str, float]:
    """Per-pair figures (ratios b / a, or differences b - a) summarised: their median, min and max, and a 95 %
    bootstrap interval of the median (resampling the pairs; a fixed seed, so a rerun prints the same interval). One
    noisy pair moves the median little, where it moves a mean a lot; with few pairs the interval is wide, and says
    so."""
    if not values:
        return {"pairs": 0, "median": math.nan, "min": math.nan, "max": math.nan, "ci95_low": math.nan,
                "ci95_high": math.nan}
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    return {"pairs": n, "median": statistics.median(values), "min": min(values), "max": max(values),
            "ci95_low": percentile(medians, 2.5), "ci95_high": percentile(medians, 97.5)}
