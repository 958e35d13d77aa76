"""`python -m benchmarks.dsp` runs end to end and writes the JSON the README table is made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import dsp


@pytest.mark.slow
def test_benchmark_writes_expected_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dsp.json"
    assert dsp.main(["--rounds", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rs = res["resampler"]
    for key in (
        "ours_us",
        "soxr_hq_us",
        "scipy_resample_poly_us",
        "ratio_vs_soxr",
        "ours_alias_db",
        "soxr_alias_db",
        "ours_delay_ms",
        "soxr_delay_ms",
    ):
        assert isinstance(rs[key], float), key
    # quality figures are deterministic (timings are not asserted: benchmarks measure, tests don't)
    assert rs["ours_alias_db"] <= -90.0
    assert 0.0 < rs["ours_delay_ms"] <= 5.0
    assert rs["ours_passband_dev_db"] <= 0.1
    for cond in ("clean", "snr10"):
        assert set(res["vad"][cond]) == {"webrtcvad_f1", "ours_f1", "silero_f1"}
        assert all(0.5 < v <= 1.0 for v in res["vad"][cond].values())
    assert set(res["vad"]["us_per_frame"]) == {"webrtcvad", "ours", "silero"}
    assert res["path_us_per_frame"] > 0
    assert res["environment"]["cpu"]
    table = capsys.readouterr().out
    assert "soxr HQ" in table and "Silero" in table and "FrontEnd" in table
