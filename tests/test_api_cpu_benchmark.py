"""`python -m benchmarks.api_cpu --audit-pairs` runs end to end over a real nx-27017, and the paired-rounds helpers
the API benchmarks judge the audit trail's cost with (`benchmarks.report.abba`, `median_summary`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import api_cpu
from benchmarks.report import abba, median_summary


def test_abba_alternates_which_mode_goes_first() -> None:
    assert abba("off", "on", 3) == ["off", "on", "on", "off", "off", "on"]
    with pytest.raises(ValueError):
        abba("off", "on", 0)


def test_median_summary_is_the_pairs_median_with_an_interval_inside_their_range() -> None:
    values = [1.02, 0.95, 1.30, 1.05, 1.01, 3.0, 1.04]
    s = median_summary(values)
    assert (s["pairs"], s["median"], s["min"], s["max"]) == (7, 1.04, 0.95, 3.0)
    assert s["min"] <= s["ci95_low"] <= s["median"] <= s["ci95_high"] <= s["max"]
    assert s["ci95_high"] < 3.0  # one wild pair does not carry the interval with it
    assert median_summary(values) == s  # the same interval on a rerun
    assert median_summary([])["pairs"] == 0


@pytest.mark.slow
def test_audit_comparison_counts_every_entry_and_reports_both_processes(tmp_path: Path) -> None:
    out = tmp_path / "api_cpu.json"
    api_cpu.main(["--repeats", "0", "--audit-pairs", "2", "--block", "20", "--json", str(out)])
    audit = json.loads(out.read_text())["audit"]
    assert (audit["pairs"], audit["block"]) == (2, 20)
    entries = audit["audit_entries"]
    # the warm-up block with the trail and the 2 measured ones
    assert entries["written"] == entries["requests_made"] == 3 * 20 and entries["chain_intact"]
    assert entries["failures"] == 0 and entries["batches"] >= 3
    for mode in ("off", "on"):
        assert audit["cpu_ms_per_request"][mode]["app"] > 0 and audit["cpu_ms_per_request"][mode]["nx_27017"] > 0
    assert audit["pair_differences_ms"]["total"]["pairs"] == 2
