"""docs/latency.png from `python -m benchmarks.latency --json` results: speech end -> final p50 / p95 per
configuration and room count, and where the time went at the smallest room count (`breakdown_ms`).

    python -m benchmarks.latency_plot "defaults=a.json" "SEMANTIC_TURNS=false=b.json" [--out docs/latency.png]

Each argument is LABEL=PATH (the label names the configuration that produced that JSON; the last `=` splits).
Several JSON files with the same label are runs of one configuration: each room count shows their median and,
as an error bar, their spread (min to max), because a shared machine moves these figures between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.latency import BREAKDOWN

TARGET_P50_MS, TARGET_P95_MS = 350, 600  # issue 17, one room


def load(specs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """LABEL=PATH arguments -> {label: [runs of every file with that label]} (a run: one room count)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"want LABEL=PATH, got {spec!r}")
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: {exc}") from None
        runs = report.get("runs")
        if not isinstance(runs, list) or not runs:
            raise SystemExit(f"{path}: no runs (not a benchmarks.latency --json file?)")
        for run in runs:
            run["_load"] = run.get("host_load_1m")
        out.setdefault(label, []).extend(runs)
    return out


def by_rooms(runs: list[dict[str, Any]], q: str) -> dict[int, list[float]]:
    """Room count -> that quantile (ms) of each run."""
    out: dict[int, list[float]] = {}
    for r in runs:
        v = r["final_latency_ms"].get(q)
        if v is not None:
            out.setdefault(int(r["rooms"]), []).append(float(v))
    return dict(sorted(out.items()))


def plot(configs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (label, runs) in enumerate(configs.items()):
        colour = f"C{i}"
        shift = (i - (len(configs) - 1) / 2) * 0.12  # configurations side by side at each room count
        for q, style in (("p50", "o-"), ("p95", "s--")):
            series = by_rooms(runs, q)
            rooms = [n + shift for n in series]
            mid = [statistics.median(v) for v in series.values()]
            err = [[m - min(v) for m, v in zip(mid, series.values(), strict=True)],
                   [max(v) - m for m, v in zip(mid, series.values(), strict=True)]]
            ax1.errorbar(rooms, mid, yerr=err, fmt=style, color=colour, capsize=3, label=f"{label} {q}")
    ax1.set_xticks(sorted({int(r["rooms"]) for runs in configs.values() for r in runs}))
    low, high = ax1.get_ylim()
    if high > 10 * max(TARGET_P50_MS, low):  # a room count past capacity (seconds behind) would flatten the rest
        ax1.set_yscale("log")
    ax1.axhline(TARGET_P50_MS, ls=":", c="grey")
    ax1.axhline(TARGET_P95_MS, ls="--", c="grey")
    ax1.text(ax1.get_xlim()[0], TARGET_P50_MS, " target p50 (1 room)", va="bottom", fontsize=8, color="grey")
    ax1.text(ax1.get_xlim()[0], TARGET_P95_MS, " target p95 (1 room)", va="bottom", fontsize=8, color="grey")
    ax1.set_xlabel("rooms (two participants each)")
    ax1.set_ylabel("speech end -> segment.final received (ms)")
    ax1.set_title("Final latency by configuration (median of runs, bars: min-max)")
    ax1.legend(fontsize=7)

    # where the time goes: mean ms per part at each configuration's smallest room count, runs averaged
    parts = [p for p in BREAKDOWN if p != "other"]
    labels, rows = [], []
    for label, runs in configs.items():
        smallest = min(int(r["rooms"]) for r in runs)
        bds = [r["breakdown_ms"] for r in runs if int(r["rooms"]) == smallest and r.get("breakdown_ms")]
        if not bds:
            continue
        labels.append(f"{label}\n{smallest} room(s), {len(bds)} run(s)")
        rows.append([statistics.fmean(b[p]["mean"] for b in bds) for p in parts])
    left = [0.0] * len(rows)
    for j, part in enumerate(parts):
        widths = [max(0.0, row[j]) for row in rows]
        ax2.barh(range(len(rows)), widths, left=left, label=part, color=f"C{j % 10}",
                 hatch="//" if j >= 10 else None)
        left = [a + w for a, w in zip(left, widths, strict=True)]
    ax2.set_yticks(range(len(rows)), labels, fontsize=8)
    ax2.set_xlabel("mean ms per turn")
    ax2.set_title("Where speech end -> final goes")
    ax2.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    loads = sorted(r["_load"] for runs in configs.values() for r in runs if r.get("_load") is not None)
    if loads:
        fig.suptitle(f"2-core machine; 1-min load at the end of the runs {loads[0]:.1f}-"
                     f"{loads[-1]:.1f}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency_plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="LABEL=PATH of a benchmarks.latency --json file (repeat labels "
                    "for runs of one configuration)")
    ap.add_argument("--out", type=Path, default=Path("docs") / "latency.png", help="PNG to write (docs/latency.png)")
    args = ap.parse_args(argv)
    plot(load(args.results), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
