"""DSP core kernels against a NumPy oracle, chunk invariance, edge lengths and bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.dsp import FrontEnd, Level, LevelMeter, Resampler, Segmenter, Utterance, Vad, design_bank

PAIRS = [(48000, 16000), (44100, 16000), (8000, 16000), (16000, 48000)]
HSETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def noise(n: int, seed: int = 0, scale: float = 6000.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).standard_normal(n) * scale, -32768, 32767).astype(np.int16)


def reference(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Textbook definition in float64: y[n] = sum_j x[j] * g(n*M + D - j*L), with g the prototype low-pass
    rebuilt from the bank, zeros outside the input, n < ceil(len(x) * L / M)."""
    bank, L, M, D = design_bank(in_rate, out_rate)
    K = bank.shape[1]
    g = bank[:, ::-1].astype(np.float64).T.reshape(-1)  # g[p + i*L] = bank[p, K-1-i]
    n_out = -(-len(x) * L // M)
    t0 = np.arange(n_out)[:, None] * M + D
    j = t0 // L - np.arange(K + 1)[None, :]
    t = t0 - j * L
    ok = (t >= 0) & (t < L * K) & (j >= 0) & (j < len(x))
    xv = np.where(ok, np.asarray(x, np.float64)[np.clip(j, 0, len(x) - 1)], 0.0)
    return np.sum(np.where(ok, g[np.clip(t, 0, L * K - 1)], 0.0) * xv, axis=1)


def test_reference_is_zero_stuff_convolve_decimate() -> None:
    """The oracle itself, against the other textbook form (cheap only for small L)."""
    x = np.random.default_rng(8).standard_normal(700)
    for a, b in ((48000, 16000), (8000, 16000), (16000, 48000)):
        bank, L, M, D = design_bank(a, b)
        g = bank[:, ::-1].astype(np.float64).T.reshape(-1)
        up = np.zeros(len(x) * L)
        up[::L] = x
        full = np.concatenate([np.convolve(up, g), np.zeros(L * bank.shape[1])])
        n_out = -(-len(x) * L // M)
        np.testing.assert_allclose(reference(x, a, b), full[np.arange(n_out) * M + D], atol=1e-12)


def one_shot(r: Resampler, x: np.ndarray) -> np.ndarray:
    return np.concatenate([r.process(x), r.flush()])


def chunked(r: Resampler, x: np.ndarray, sizes: list[int], stereo: bool = False) -> np.ndarray:
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)] * (2 if stereo else 1)
        k += 1
        out.append(r.process_stereo(x[i : i + n]) if stereo else r.process(x[i : i + n]))
        i += n
    out.append(r.flush())
    return np.concatenate(out)


# ---------------------------------------------------------------- resampler


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_matches_numpy_reference(a: int, b: int) -> None:
    x = (np.random.default_rng(3).standard_normal(a // 10) * 0.3).astype(np.float32)
    y = one_shot(Resampler(a, b), x)
    ref = reference(x.astype(np.float64), a, b)
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_int16_matches_reference_within_rounding(a: int, b: int) -> None:
    x = noise(a // 20, seed=4)
    y = one_shot(Resampler(a, b), x)
    ref = np.clip(np.round(reference(x.astype(np.float64), a, b)), -32768, 32767)
    assert y.dtype == np.int16
    assert np.max(np.abs(y.astype(np.int64) - ref)) <= 1


@pytest.mark.parametrize(("a", "b"), PAIRS)
@given(sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=12), seed=st.integers(0, 2**16))
@HSETTINGS
def test_chunking_never_changes_int16_output(a: int, b: int, sizes: list[int], seed: int) -> None:
    x = noise(a // 8, seed=seed)
    assert np.array_equal(chunked(Resampler(a, b), x, sizes), one_shot(Resampler(a, b), x))


@given(sizes=st.lists(st.integers(1, 2500), min_size=1, max_size=8), seed=st.integers(0, 2**16))
@HSETTINGS
def test_chunking_never_changes_float_or_stereo_output(sizes: list[int], seed: int) -> None:
    xf = (np.random.default_rng(seed).standard_normal(9000)).astype(np.float32)
    assert np.array_equal(chunked(Resampler(48000, 16000), xf, sizes), one_shot(Resampler(48000, 16000), xf))
    xs = noise(2 * 9000, seed=seed)
    r = Resampler(48000, 16000)
    whole = np.concatenate([r.process_stereo(xs), r.flush()])
    assert np.array_equal(chunked(Resampler(48000, 16000), xs, sizes, stereo=True), whole)


def test_stereo_downmix_is_fused_average() -> None:
    xs = noise(2 * 4801, seed=9)
    r = Resampler(48000, 16000)
    y = np.concatenate([r.process_stereo(xs), r.flush()])
    mono = (xs[0::2].astype(np.float32) + xs[1::2].astype(np.float32)) * np.float32(0.5)
    f = one_shot(Resampler(48000, 16000), np.ascontiguousarray(mono))
    assert np.array_equal(y, np.clip(np.rint(f), -32768, 32767).astype(np.int16))


@pytest.mark.parametrize(("a", "b"), PAIRS)
@given(level=st.integers(-32768, 32767))
@settings(max_examples=15, deadline=None)
def test_dc_gain_is_one(a: int, b: int, level: int) -> None:
    x = np.full(a // 10, level, np.int16)
    y = one_shot(Resampler(a, b), x)
    settle = 64 * max(1, b // a)  # the filter's edges see the zeros outside the stream
    assert np.all(y[settle:-settle] == level)


@given(
    c1=st.floats(-4, 4, allow_nan=False, width=32),
    c2=st.floats(-4, 4, allow_nan=False, width=32),
    seed=st.integers(0, 1000),
)
@settings(max_examples=25, deadline=None)
def test_linearity(c1: float, c2: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal(3000).astype(np.float32)
    x2 = rng.standard_normal(3000).astype(np.float32)
    mix = (np.float32(c1) * x1 + np.float32(c2) * x2).astype(np.float32)
    lhs = one_shot(Resampler(44100, 16000), mix)
    rhs = c1 * one_shot(Resampler(44100, 16000), x1) + c2 * one_shot(Resampler(44100, 16000), x2)
    np.testing.assert_allclose(lhs, rhs, atol=1e-5 * (abs(c1) + abs(c2) + 1))


@given(order=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 1200)), min_size=1, max_size=40))
@settings(max_examples=30, deadline=None)
def test_instances_never_share_state(order: list[tuple[int, int]]) -> None:
    """Three streams (two of them at the same rate pair) fed in a random interleaving give exactly what each
    gives alone."""
    pairs = [(48000, 16000), (48000, 16000), (44100, 16000)]
    xs = [noise(20000, seed=k) for k in range(3)]
    alone = [one_shot(Resampler(*pairs[k]), xs[k]) for k in range(3)]
    rs = [Resampler(*p) for p in pairs]
    outs: list[list[np.ndarray]] = [[], [], []]
    pos = [0, 0, 0]
    for k, n in order:
        if pos[k] < len(xs[k]):
            outs[k].append(rs[k].process(xs[k][pos[k] : pos[k] + n]))
            pos[k] += n
    for k in range(3):
        if pos[k] < len(xs[k]):
            outs[k].append(rs[k].process(xs[k][pos[k] :]))
        outs[k].append(rs[k].flush())
        assert np.array_equal(np.concatenate(outs[k]), alone[k])


@pytest.mark.parametrize(("a", "b"), PAIRS)
@pytest.mark.parametrize("n", [1, 2, 3, 159, 160, 161, 319, 320, 321, 959, 960, 961, 1919, 1921, 4097])
def test_edge_lengths(a: int, b: int, n: int) -> None:
    x = noise(n, seed=n)
    r = Resampler(a, b)
    head = r.process(x)
    tail = r.flush()
    assert len(head) + len(tail) == math.ceil(n * b / a)
    ref = np.clip(np.rint(reference(x.astype(np.float64), a, b)), -32768, 32767)
    assert np.max(np.abs(np.concatenate([head, tail]).astype(np.int64) - ref)) <= 1
    # after flush the instance starts a fresh stream: same answer again
    assert np.array_equal(np.concatenate([r.process(x), r.flush()]), np.concatenate([head, tail]))


def test_odd_chunks_one_sample_at_a_time() -> None:
    x = noise(999, seed=5)
    r = Resampler(44100, 16000)
    y = np.concatenate([r.process(x[i : i + 1]) for i in range(len(x))] + [r.flush()])
    assert np.array_equal(y, one_shot(Resampler(44100, 16000), x))


def _tone_gain_db(r_in: int, r_out: int, f: float) -> float:
    t = np.arange(r_in // 2) / r_in
    x = np.sin(2 * np.pi * f * t).astype(np.float32)
    y = one_shot(Resampler(r_in, r_out), x)
    mid = y[len(y) // 5 : -len(y) // 5].astype(np.float64)
    return 20 * math.log10(math.sqrt(np.mean(mid**2)) / math.sqrt(0.5) + 1e-300)


def test_passband_flat_and_alias_rejection_48k() -> None:
    for f in (100.0, 1000.0, 3000.0, 5000.0, 6500.0, 7000.0):
        assert abs(_tone_gain_db(48000, 16000, f)) <= 0.1, f
    for f in np.linspace(8200.0, 23000.0, 25):
        assert _tone_gain_db(48000, 16000, float(f)) <= -90.0, f


def test_passband_flat_and_alias_rejection_44k1() -> None:
    for f in (1000.0, 7000.0):
        assert abs(_tone_gain_db(44100, 16000, f)) <= 0.1, f
    for f in (8200.0, 10000.0, 15000.0, 21000.0):
        assert _tone_gain_db(44100, 16000, f) <= -90.0, f


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_delay_at_most_5ms_and_output_aligned(a: int, b: int) -> None:
    r = Resampler(a, b)
    assert 0 < r.delay_s <= 0.005
    # streaming holds back no more than the delay
    x = noise(a, seed=6)
    produced = sum(len(r.process(x[i : i + a // 50])) for i in range(0, a, a // 50))
    assert a * b / a - produced <= r.delay_samples + 1
    # and the output is aligned with the input: a click at input time t comes out at output time t
    click = np.zeros(a // 10, np.float32)
    click[a // 20] = 1.0
    y = one_shot(Resampler(a, b), click)
    assert abs(int(np.argmax(np.abs(y))) - (a // 20) * b / a) <= 1


def test_flush_without_input_is_empty_and_same_rate_is_identity() -> None:
    assert Resampler(48000, 16000).flush().size == 0
    x = noise(1001, seed=7)
    assert np.array_equal(one_shot(Resampler(16000, 16000), x), x)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros(10, np.float64), "dtype"),
        (np.zeros(10, np.int32), "dtype"),
        (np.zeros((5, 2), np.int16), "1-D"),
        (np.zeros(20, np.int16)[::2], "contiguous"),
        (np.zeros(0, np.int16), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([np.inf, 0.0], np.float32), "NaN or infinity"),
        ([1, 2, 3], "numpy array"),
    ],
)
def test_bad_input_raises_value_error(x: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Resampler(48000, 16000).process(x)  # type: ignore[arg-type]


def test_bad_stereo_and_mixed_use() -> None:
    r = Resampler(48000, 16000)
    with pytest.raises(ValueError, match="even number"):
        r.process_stereo(np.zeros(3, np.int16))
    with pytest.raises(ValueError, match="int16"):
        r.process_stereo(np.zeros(4, np.float32))
    r.process(np.zeros(30, np.int16))
    with pytest.raises(ValueError, match="int16 mono"):
        r.process(np.zeros(30, np.float32))
    with pytest.raises(ValueError, match="int16 mono"):
        r.process_stereo(np.zeros(30, np.int16))
    r.flush()
    r.process(np.zeros(30, np.float32))  # a new stream may use another layout


@pytest.mark.parametrize(
    ("a", "b"), [(0, 16000), (48000, 0), (-8000, 16000), (48000.0, 16000), (True, 16000), (10**7, 16000)]
)
def test_bad_rates(a: object, b: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        Resampler(a, b)  # type: ignore[arg-type]


def test_nan_is_rejected_without_corrupting_stream() -> None:
    x = np.random.default_rng(0).standard_normal(2000).astype(np.float32)
    r = Resampler(48000, 16000)
    a = r.process(x[:1000])
    with pytest.raises(ValueError):
        r.process(np.array([np.nan] * 5, np.float32))
    b = np.concatenate([a, r.process(x[1000:]), r.flush()])
    assert np.array_equal(b, one_shot(Resampler(48000, 16000), x))


# ---------------------------------------------------------------- level meter


def test_level_meter() -> None:
    m = LevelMeter()
    t = np.arange(1600) / 16000
    sine = np.round(np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16)
    lv = m.measure(sine)
    assert isinstance(lv, Level)
    assert lv.rms_dbfs == pytest.approx(-3.01, abs=0.02)
    assert lv.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert lv.clipped == int(np.sum(np.abs(sine.astype(np.int32)) >= 32767))
    silent = m.measure(np.zeros(320, np.int16))
    assert silent.rms_dbfs == -120.0 and silent.peak_dbfs == -120.0 and silent.clipped == 0
    half = m.measure(np.full(320, 16384, np.int16))
    assert half.rms_dbfs == pytest.approx(-6.02, abs=0.01)
    with pytest.raises(ValueError, match="int16"):
        m.measure(np.zeros(10, np.float32))


# ---------------------------------------------------------------- VAD


@pytest.mark.parametrize("kind", ["hybrid", "webrtc", "silero"])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_vad_noise_then_tone_bursts(kind: str, frame_ms: int) -> None:
    """Steady noise is not speech; a loud voiced-band signal (harmonic buzz at 150 Hz) over it is, for hybrid
    and webrtc. Silero is trained on real voices, so it is only required to reject the noise here."""
    n = frame_ms * 16
    v = Vad(kind, frame_ms)
    rng = np.random.default_rng(0)
    bg = (rng.standard_normal(16000 * 3) * 300).astype(np.float64)
    t = np.arange(16000) / 16000
    buzz = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20)) * 4000
    x = bg.copy()
    x[32000:48000] += buzz
    x = np.clip(x, -32768, 32767).astype(np.int16)
    flags = [v.process(x[i : i + n]) for i in range(0, len(x) - n + 1, n)]
    per_s = 1000 // frame_ms
    assert not any(flags[per_s // 2 : 2 * per_s])  # noise only (after a short warm-up)
    if kind != "silero":
        assert np.mean(flags[2 * per_s + 5 : 3 * per_s - 5]) > 0.9


def test_vad_bad_input() -> None:
    with pytest.raises(ValueError, match="vad must be one of"):
        Vad("energy")
    with pytest.raises(ValueError, match="frame_ms"):
        Vad("hybrid", 25)
    v = Vad("hybrid", 20)
    with pytest.raises(ValueError, match="exactly 320"):
        v.process(np.zeros(321, np.int16))
    with pytest.raises(ValueError, match="int16"):
        v.process(np.zeros(320, np.float32))


# ---------------------------------------------------------------- segmenter


def _run_segmenter(
    flags: list[bool], frame_len: int = 320, **kw: object
) -> tuple[Segmenter, np.ndarray, list[Utterance]]:
    seg = Segmenter(frame_len * 1000 // 16000, **kw)  # type: ignore[arg-type]
    audio = np.arange(len(flags) * frame_len + 77, dtype=np.int64) % 30000  # sample value = identity
    audio = audio.astype(np.int16)
    utts: list[Utterance] = []
    for i, f in enumerate(flags):
        utts += seg.push(audio[i * frame_len : (i + 1) * frame_len], f)
    utts += seg.flush(audio[len(flags) * frame_len :])
    return seg, audio, utts


@given(
    flags=st.lists(st.booleans(), max_size=600),
    pre=st.integers(0, 600),
    end=st.integers(20, 700),
    minsp=st.integers(0, 400),
    maxlen=st.floats(0.8, 3.0),
)
@settings(max_examples=150, deadline=None)
def test_segmenter_accounts_for_every_sample(
    flags: list[bool], pre: int, end: int, minsp: int, maxlen: float
) -> None:
    seg, audio, utts = _run_segmenter(
        flags, pre_roll_ms=pre, end_silence_ms=end, min_speech_ms=minsp, max_utterance_s=maxlen
    )
    assert seg.samples_in == len(audio)
    assert sum(len(u.audio) for u in utts) + seg.discarded_samples == len(audio)
    prev_end = 0
    for u in utts:
        assert prev_end <= u.start < u.end <= len(audio)
        assert len(u.audio) == u.end - u.start
        assert np.array_equal(u.audio, audio[u.start : u.end])  # sample-accurate, no loss, no duplication
        assert u.end - u.start <= round(maxlen * 16000) + 320
        assert u.start <= u.speech_start <= u.speech_end <= u.end  # type: ignore[operator]
        assert u.speech_start - u.start <= pre * 16  # type: ignore[operator]
        prev_end = u.end
    assert not seg.in_progress


def test_segmenter_preroll_end_silence_and_min_speech() -> None:
    F = 320
    flags = [False] * 50 + [True] * 30 + [False] * 10 + [True] * 20 + [False] * 40 + [True] * 3 + [False] * 40
    seg, audio, utts = _run_segmenter(flags, pre_roll_ms=300, end_silence_ms=500, min_speech_ms=200)
    assert len(utts) == 1  # the 200 ms gap does not end it; the 60 ms click is rejected
    u = utts[0]
    assert u.speech_start == 50 * F and u.start == 50 * F - 4800
    assert u.speech_end == 110 * F
    assert u.end == u.speech_end + 25 * F  # 500 ms of trailing silence
    assert u.start_s == pytest.approx(u.start / 16000) and u.speech_end_s == pytest.approx(110 * F / 16000)


def test_segmenter_cuts_long_speech_at_quietest_frame() -> None:
    F = 320
    seg = Segmenter(20, pre_roll_ms=0, end_silence_ms=500, min_speech_ms=0, max_utterance_s=4.0)
    rng = np.random.default_rng(1)
    loud = (rng.standard_normal(F * 400) * 5000).astype(np.int16)
    quiet_frame = 170  # 3.4 s in: inside the search window before the 4 s limit
    loud[quiet_frame * F : (quiet_frame + 1) * F] //= 100
    utts: list[Utterance] = []
    for i in range(400):
        utts += seg.push(loud[i * F : (i + 1) * F], True)
    assert utts and utts[0].end == quiet_frame * F + F // 2
    assert seg.in_progress
    start, partial = seg.partial_audio()  # type: ignore[misc]
    assert start == utts[-1].end and np.array_equal(partial, loud[start : 400 * F])
    utts += seg.flush()
    assert sum(len(u.audio) for u in utts) == 400 * F
    assert all(u.end - u.start <= 4 * 16000 for u in utts)


def test_segmenter_bad_config() -> None:
    with pytest.raises(ValueError, match="pre_roll_ms"):
        Segmenter(20, pre_roll_ms=-1)
    with pytest.raises(ValueError, match="end_silence_ms"):
        Segmenter(20, end_silence_ms=0)
    with pytest.raises(ValueError, match="max_utterance_s"):
        Segmenter(20, max_utterance_s=0.01)
    with pytest.raises(ValueError, match="max_utterance_s"):
        Segmenter(20, max_utterance_s=float("nan"))
    s = Segmenter(20)
    with pytest.raises(ValueError, match="exactly 320"):
        s.push(np.zeros(300, np.int16), True)
    s.flush()
    with pytest.raises(ValueError, match="flushed"):
        s.push(np.zeros(320, np.int16), True)


# ---------------------------------------------------------------- front end


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """48 kHz stereo: noise floor with three buzzing 'words' separated by long pauses."""
    rate = 48000
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = rng.standard_normal(n) * 100
    t = np.arange(rate) / rate
    buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 25)) * 5000
    for s in (0.5, 2.5, 4.0):
        a = int(s * rate)
        x[a : a + rate // 2] += buzz[: rate // 2]
    mono = np.clip(x, -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(np.stack([mono, mono], axis=1).reshape(-1))


@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=10))
@settings(max_examples=20, deadline=None)
def test_frontend_output_independent_of_push_sizes(sizes: list[int]) -> None:
    pcm = _speechy(5.5)

    def run(sz: list[int]) -> tuple[list[tuple[int, int, bytes]], int, int]:
        fe = FrontEnd(48000, 2)
        got, i, k = [], 0, 0
        while i < pcm.size:
            n = 2 * sz[k % len(sz)]
            k += 1
            got += fe.push(pcm[i : i + n])
            i += n
        got += fe.flush()
        assert sum(len(u.audio) for u in got) + fe.discarded_samples == fe.samples_in
        return [(u.start, u.end, u.audio.tobytes()) for u in got], fe.samples_in, fe.speech_samples

    ref = run([960])
    assert ref[1] == 5.5 * 16000 and len(ref[0]) == 3
    assert run(sizes) == ref


def test_frontend_state_signals() -> None:
    pcm = _speechy(5.5)
    fe = FrontEnd(48000, 2, vad="hybrid")
    seen_partial = False
    utts: list[Utterance] = []
    levels: list[float] = []
    for i in range(0, pcm.size, 1920):
        utts += fe.push(pcm[i : i + 1920])
        levels.append(fe.level.rms_dbfs)
        if fe.in_progress:
            start, audio = fe.partial_audio()  # type: ignore[misc]
            assert audio.dtype == np.int16 and start + len(audio) <= fe.samples_in
            seen_partial = True
            assert fe.speaking or fe.in_progress
        else:
            assert fe.partial_audio() is None
    utts += fe.flush()
    assert seen_partial and len(utts) == 3
    assert max(levels) > -20 and min(levels) < -45
    for u, s in zip(utts, (0.5, 2.5, 4.0), strict=True):
        # the end may trail by webrtcvad's own hangover (a few frames) under the stay threshold
        assert abs(u.speech_start_s - s) < 0.05 and -0.05 < u.speech_end_s - (s + 0.5) <= 0.15
        assert u.start_s == pytest.approx(s - 0.3, abs=0.03)
    assert fe.speech_samples == pytest.approx(1.5 * 16000, rel=0.1)
    with pytest.raises(ValueError, match="flushed"):
        fe.push(pcm[:1920])


def test_frontend_counts_clipping() -> None:
    fe = FrontEnd(48000, 1)
    x = np.zeros(960, np.int16)
    x[:7] = 32767
    x[7:10] = -32768
    fe.push(x)
    fe.push(np.zeros(960, np.int16))  # the 16 kHz frame completes once the filter's look-ahead is in
    assert fe.level.clipped == 10
    fe.push(np.zeros(1920, np.int16))
    assert fe.level.clipped == 0


@pytest.mark.parametrize(
    ("pcm", "match"),
    [
        (np.zeros(1920, np.float32), "int16"),
        (np.zeros((960, 2), np.int16), "1-D"),
        (np.zeros(3840, np.int16)[::2], "contiguous"),
        (np.zeros(1921, np.int16), "multiple of 2"),
        (np.zeros(0, np.int16), "empty"),
        (b"\x00" * 100, "numpy array"),
    ],
)
def test_frontend_bad_input(pcm: object, match: str) -> None:
    fe = FrontEnd(48000, 2)
    with pytest.raises(ValueError, match=match):
        fe.push(pcm)  # type: ignore[arg-type]
    fe.push(np.zeros(1920, np.int16))  # still usable afterwards


def test_frontend_bad_config() -> None:
    with pytest.raises(ValueError, match="channels"):
        FrontEnd(48000, 3)
    with pytest.raises(ValueError, match="in_rate"):
        FrontEnd(0, 2)
    with pytest.raises(ValueError, match="vad"):
        FrontEnd(48000, 2, vad="nope")
    with pytest.raises(ValueError, match="frame_ms"):
        FrontEnd(48000, 2, frame_ms=15)


def test_missing_build_names_the_fix() -> None:
    """Without the compiled extension, importing the facade says how to build it."""
    code = "import sys; sys.modules['pipeline._dsp'] = None; import pipeline.dsp"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "pip install -e ." in proc.stderr
