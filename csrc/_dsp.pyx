# cython: language_level=3
"""Native DSP kernels: polyphase resampler (with fused stereo downmix), per-frame speech features, level meter
and the utterance segmenter state machine.

Thin kernels over C buffers. The Python facade (pipeline/dsp.py) validates dtype, shape, contiguity and rates
before calling in; kernels report data problems (NaN/inf) through status codes. Every inner loop runs without
the GIL.
"""

from libc.math cimport M_PI, cos, log, log10, sin, sinh, sqrt
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset

cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>
    #include <string.h>
    /* 16 lanes in two 8-float vectors: gcc maps these to AVX2 FMAs (two SSE ops each without AVX). The
       summation order is fixed by the code, not by the compiler (no -ffast-math), so an output sample is
       bit-identical however the input was chunked. */
    typedef float dsp_v8f __attribute__((vector_size(32)));
    #define DSP_LD(dst, src) memcpy(&(dst), (src), 32)
    static inline float dsp_hsum(dsp_v8f a0, dsp_v8f a1) {
        dsp_v8f s = a0 + a1;
        return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    }
    /* Four independent dot products of length k (a multiple of 16) at once: eight accumulator chains keep
       the FMA units busy instead of waiting on one chain's latency. Every output is computed by this one
       function (short groups repeat their last window), so its value never depends on how outputs are
       grouped, i.e. on how the input was chunked. */
    static void dsp_dot4(const float *const h[4], const float *const x[4], int k, float out[4]) {
        dsp_v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
        dsp_v8f hh0, hh1, xx0, xx1;
        for (int j = 0; j < k; j += 16) {
            DSP_LD(hh0, h[0] + j); DSP_LD(hh1, h[0] + j + 8); DSP_LD(xx0, x[0] + j); DSP_LD(xx1, x[0] + j + 8);
            a00 += hh0 * xx0; a01 += hh1 * xx1;
            DSP_LD(hh0, h[1] + j); DSP_LD(hh1, h[1] + j + 8); DSP_LD(xx0, x[1] + j); DSP_LD(xx1, x[1] + j + 8);
            a10 += hh0 * xx0; a11 += hh1 * xx1;
            DSP_LD(hh0, h[2] + j); DSP_LD(hh1, h[2] + j + 8); DSP_LD(xx0, x[2] + j); DSP_LD(xx1, x[2] + j + 8);
            a20 += hh0 * xx0; a21 += hh1 * xx1;
            DSP_LD(hh0, h[3] + j); DSP_LD(hh1, h[3] + j + 8); DSP_LD(xx0, x[3] + j); DSP_LD(xx1, x[3] + j + 8);
            a30 += hh0 * xx0; a31 += hh1 * xx1;
        }
        out[0] = dsp_hsum(a00, a01);
        out[1] = dsp_hsum(a10, a11);
        out[2] = dsp_hsum(a20, a21);
        out[3] = dsp_hsum(a30, a31);
    }
    /* Same arithmetic as dsp_dot4 when all four outputs use one phase (pure decimation, L == 1): the taps
       are loaded once for four windows, which matters because the loop is bound by loads. */
    static void dsp_dot4s(const float *h, const float *const x[4], int k, float out[4]) {
        dsp_v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
        dsp_v8f hh0, hh1, xx0, xx1;
        for (int j = 0; j < k; j += 16) {
            DSP_LD(hh0, h + j); DSP_LD(hh1, h + j + 8);
            DSP_LD(xx0, x[0] + j); DSP_LD(xx1, x[0] + j + 8); a00 += hh0 * xx0; a01 += hh1 * xx1;
            DSP_LD(xx0, x[1] + j); DSP_LD(xx1, x[1] + j + 8); a10 += hh0 * xx0; a11 += hh1 * xx1;
            DSP_LD(xx0, x[2] + j); DSP_LD(xx1, x[2] + j + 8); a20 += hh0 * xx0; a21 += hh1 * xx1;
            DSP_LD(xx0, x[3] + j); DSP_LD(xx1, x[3] + j + 8); a30 += hh0 * xx0; a31 += hh1 * xx1;
        }
        out[0] = dsp_hsum(a00, a01);
        out[1] = dsp_hsum(a10, a11);
        out[2] = dsp_hsum(a20, a21);
        out[3] = dsp_hsum(a30, a31);
    }
    static inline short dsp_sat16(float v) {
        v = nearbyintf(v);
        if (v > 32767.0f) return 32767;
        if (v < -32768.0f) return -32768;
        return (short)v;
    }
    static inline int dsp_isfinite(float v) { return isfinite(v); }
    """
    void dsp_dot4(const float *const h[4], const float *const x[4], int k, float out[4]) noexcept nogil
    void dsp_dot4s(const float *h, const float *const x[4], int k, float out[4]) noexcept nogil
    short dsp_sat16(float v) noexcept nogil
    int dsp_isfinite(float v) noexcept nogil

ctypedef long long i64

# Status codes returned by kernels; the facade turns them into ValueErrors.
cdef enum:
    OK = 0
    NONFINITE = 1


cdef class Polyphase:
    """Streaming polyphase FIR: output n is the dot product of phase (n*M + D) mod L with the K newest inputs
    up to index (n*M + D) // L. Inputs before the stream start are zeros; `flush` appends zeros so that exactly
    ceil(n_in * L / M) outputs come out, aligned with the input (the filter delay D is compensated)."""

    cdef float *bank        # L rows of K taps, time-reversed, padded to a multiple of 16
    cdef float *buf         # input history, buf[0] is input index `base`
    cdef float *scratch     # float output before int16 conversion
    cdef Py_ssize_t cap, nbuf, scap
    cdef readonly int L, M, K
    cdef readonly i64 D, base, n_in, n_out
    cdef readonly long clipped   # full-scale int16 input samples seen in the last call

    def __cinit__(self, const float[:, ::1] bank not None, int L, int M, i64 D):
        self.L = L
        self.M = M
        self.K = bank.shape[1]
        self.D = D
        if bank.shape[0] != L or self.K % 16 != 0 or L <= 0 or M <= 0 or D < 0:
            raise ValueError("bank must be L x K with K a multiple of 16")
        self.bank = <float *> malloc(L * self.K * sizeof(float))
        self.cap = self.K + 8192
        self.buf = <float *> malloc(self.cap * sizeof(float))
        self.scap = 4096
        self.scratch = <float *> malloc(self.scap * sizeof(float))
        if self.bank == NULL or self.buf == NULL or self.scratch == NULL:
            raise MemoryError()
        memcpy(self.bank, &bank[0, 0], L * self.K * sizeof(float))
        self.reset()

    def __dealloc__(self):
        free(self.bank)
        free(self.buf)
        free(self.scratch)

    cpdef void reset(self):
        memset(self.buf, 0, self.K * sizeof(float))
        self.base = -self.K
        self.nbuf = self.K
        self.n_in = 0
        self.n_out = 0
        self.clipped = 0

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.nbuf + extra
        cdef float *p
        if need > self.cap:
            p = <float *> realloc(self.buf, need * 2 * sizeof(float))
            if p == NULL:
                raise MemoryError()
            self.buf = p
            self.cap = need * 2
        return 0

    cdef int _reserve_scratch(self, Py_ssize_t n) except -1:
        cdef float *p
        if n > self.scap:
            p = <float *> realloc(self.scratch, n * sizeof(float))
            if p == NULL:
                raise MemoryError()
            self.scratch = p
            self.scap = n
        return 0

    cdef inline Py_ssize_t _end_for(self, i64 avail_in) noexcept nogil:
        # first output index whose window is NOT complete with avail_in inputs
        cdef i64 t = <i64> self.L * avail_in - 1 - self.D
        if t < 0:
            return 0
        return <Py_ssize_t> (t // self.M + 1)

    cdef void _run(self, Py_ssize_t count, float *out) noexcept nogil:
        cdef i64 t = self.n_out * self.M + self.D
        cdef i64 j = t // self.L
        cdef i64 p = t % self.L
        cdef Py_ssize_t i, g, r
        cdef int K = self.K, L = self.L, M = self.M
        cdef const float *bank = self.bank
        cdef const float *x0 = self.buf - self.base - K + 1   # x0 + j = window of the output whose newest input is j
        cdef const float *hp[4]
        cdef const float *xp[4]
        cdef float o4[4]
        i = 0
        while i < count:
            r = min(4, count - i)
            for g in range(4):
                if g < r:
                    hp[g] = bank + p * K
                    xp[g] = x0 + j
                    p += M
                    j += p // L
                    p = p % L
                else:
                    hp[g] = hp[r - 1]
                    xp[g] = xp[r - 1]
            if L == 1:
                dsp_dot4s(bank, xp, K, o4)
            else:
                dsp_dot4(hp, xp, K, o4)
            for g in range(r):
                out[i + g] = o4[g]
            i += r
        self.n_out += count

    cdef void _trim(self) noexcept nogil:
        cdef i64 t = self.n_out * self.M + self.D
        cdef i64 start = t // self.L - self.K + 1
        cdef i64 shift = start - self.base
        if shift > self.nbuf:
            shift = self.nbuf
        if shift > 0:
            memmove(self.buf, self.buf + shift, (self.nbuf - shift) * sizeof(float))
            self.base += shift
            self.nbuf -= shift

    cdef int _append_i16(self, const short *x, Py_ssize_t n, bint stereo) noexcept nogil:
        cdef float *dst = self.buf + self.nbuf
        cdef Py_ssize_t i
        cdef long clip = 0
        cdef short a, b
        if stereo:
            for i in range(n):
                a = x[2 * i]
                b = x[2 * i + 1]
                clip += (a >= 32767 or a <= -32767) + (b >= 32767 or b <= -32767)
                dst[i] = (<float> a + <float> b) * <float> 0.5
        else:
            for i in range(n):
                a = x[i]
                clip += (a >= 32767 or a <= -32767)
                dst[i] = <float> a
        self.nbuf += n
        self.n_in += n
        self.clipped = clip
        return 0

    cdef int _append_f32(self, const float *x, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i
        cdef int bad = 0
        for i in range(n):
            bad |= not dsp_isfinite(x[i])
        if bad:
            return NONFINITE
        memcpy(self.buf + self.nbuf, x, n * sizeof(float))
        self.nbuf += n
        self.n_in += n
        self.clipped = 0
        return OK

    cdef Py_ssize_t _produce(self, float *out, Py_ssize_t count) noexcept nogil:
        self._run(count, out)
        self._trim()
        return count

    # ---- Python-visible entry points (arguments validated by the facade) ----

    cdef Py_ssize_t _process_i16(self, const short *x, Py_ssize_t n, bint stereo) except -1:
        """Consume n (mono or stereo-pair) samples; the new outputs are left in self.scratch (float)."""
        cdef Py_ssize_t count
        self._reserve(n)
        with nogil:
            self._append_i16(x, n, stereo)
        count = self._end_for(self.n_in) - self.n_out
        self._reserve_scratch(count)
        with nogil:
            self._produce(self.scratch, count)
        return count

    cdef void _scratch_to_i16(self, short *o, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(count):
            o[i] = dsp_sat16(self.scratch[i])

    def process_i16(self, const short[::1] x not None, bint stereo):
        cdef Py_ssize_t n = x.shape[0] // 2 if stereo else x.shape[0]
        cdef Py_ssize_t count = self._process_i16(&x[0] if x.shape[0] else NULL, n, stereo)
        cdef cnp.ndarray[cnp.int16_t, ndim=1] out = np.empty(count, dtype=np.int16)
        with nogil:
            self._scratch_to_i16(<short *> cnp.PyArray_DATA(out), count)
        return out

    def process_f32(self, const float[::1] x not None):
        cdef Py_ssize_t n = x.shape[0]
        cdef Py_ssize_t count
        cdef int status
        cdef cnp.ndarray[cnp.float32_t, ndim=1] out
        self._reserve(n)
        with nogil:
            status = self._append_f32(&x[0] if n else NULL, n)
        if status != OK:
            return status
        count = self._end_for(self.n_in) - self.n_out
        out = np.empty(count, dtype=np.float32)
        with nogil:
            self._produce(<float *> cnp.PyArray_DATA(out), count)
        return out

    def flush_f32(self):
        """Append zeros past the end and return the remaining outputs (float32); then reset."""
        cdef i64 total = (self.n_in * self.L + self.M - 1) // self.M
        cdef Py_ssize_t count = <Py_ssize_t> (total - self.n_out)
        cdef i64 last_j, zeros
        cdef cnp.ndarray[cnp.float32_t, ndim=1] out
        if count <= 0:
            self.reset()
            return np.empty(0, dtype=np.float32)
        last_j = ((total - 1) * self.M + self.D) // self.L
        zeros = last_j + 1 - (self.base + self.nbuf)
        if zeros > 0:
            self._reserve(<Py_ssize_t> zeros)
            memset(self.buf + self.nbuf, 0, zeros * sizeof(float))
            self.nbuf += zeros
        out = np.empty(count, dtype=np.float32)
        with nogil:
            self._run(count, <float *> cnp.PyArray_DATA(out))
        self.reset()
        return out

    def flush_i16(self):
        cdef cnp.ndarray[cnp.float32_t, ndim=1] f = self.flush_f32()
        cdef Py_ssize_t i, n = f.shape[0]
        cdef cnp.ndarray[cnp.int16_t, ndim=1] out = np.empty(n, dtype=np.int16)
        cdef short *o = <short *> cnp.PyArray_DATA(out)
        cdef float *src = <float *> cnp.PyArray_DATA(f)
        with nogil:
            for i in range(n):
                o[i] = dsp_sat16(src[i])
        return out

    @property
    def held_back(self):
        """Inputs received whose outputs have not been produced yet, in output samples (float)."""
        return self.n_in * self.L / self.M - self.n_out


cdef struct FrameStats:
    double sumsq        # sum of squares of the frame (int16 units)
    double band_sumsq   # same after the speech-band filter
    int peak            # max |x|


cdef class BandEnergy:
    """Per-frame features for the hybrid VAD: energy in a 250-1500 Hz band (where voiced speech lives and white
    or broadband noise carries little of its power), an adaptive noise floor (fast down, +3 dB/s up) and the
    band SNR over it. Plus RMS/peak for the level meter, computed in the same pass."""

    cdef double b0, b1, b2, a1, a2, z1, z2
    cdef double floor, rise
    cdef bint started
    cdef readonly double snr_db, energy, band_energy
    cdef readonly int peak

    def __cinit__(self, double rate=16000.0, double frame_s=0.02):
        # RBJ cookbook band-pass (0 dB peak), centre sqrt(250*1500) Hz, bandwidth log2(1500/250) octaves
        cdef double f0 = sqrt(250.0 * 1500.0)
        cdef double bw = log(1500.0 / 250.0) / log(2.0)
        cdef double w0 = 2.0 * M_PI * f0 / rate
        cdef double alpha = sin(w0) * sinh(log(2.0) / 2.0 * bw * w0 / sin(w0))
        cdef double a0 = 1.0 + alpha
        self.b0 = alpha / a0
        self.b1 = 0.0
        self.b2 = -alpha / a0
        self.a1 = -2.0 * cos(w0) / a0
        self.a2 = (1.0 - alpha) / a0
        self.rise = 10.0 ** (0.3 * frame_s)   # +3 dB per second
        self.reset()

    cpdef void reset(self):
        self.z1 = 0.0
        self.z2 = 0.0
        self.floor = 1.0
        self.started = False
        self.snr_db = 0.0
        self.energy = 0.0
        self.band_energy = 0.0
        self.peak = 0

    cdef FrameStats _stats(self, const short *x, Py_ssize_t n) noexcept nogil:
        cdef FrameStats st
        cdef Py_ssize_t i
        cdef double v, y, s = 0.0, sb = 0.0
        cdef double z1 = self.z1, z2 = self.z2
        cdef double b0 = self.b0, b2 = self.b2, a1 = self.a1, a2 = self.a2
        cdef int pk = 0, a
        for i in range(n):
            v = x[i]
            s += v * v
            a = x[i] if x[i] >= 0 else -(<int> x[i])
            if a > pk:
                pk = a
            # transposed direct form II (b1 == 0)
            y = b0 * v + z1
            z1 = -a1 * y + z2
            z2 = b2 * v - a2 * y
            sb += y * y
        self.z1 = z1
        self.z2 = z2
        st.sumsq = s
        st.band_sumsq = sb
        st.peak = pk
        return st

    cdef double frame(self, const short *x, Py_ssize_t n) noexcept nogil:
        cdef FrameStats st = self._stats(x, n)
        cdef double e = st.band_sumsq / n + 1.0   # +1: a floor for digital silence
        self.energy = st.sumsq / n
        self.band_energy = e
        self.peak = st.peak
        if not self.started:
            self.floor = e
            self.started = True
        elif e < self.floor:
            self.floor = 0.7 * self.floor + 0.3 * e
        else:
            self.floor *= self.rise
        if self.floor < 1.0:
            self.floor = 1.0
        self.snr_db = 10.0 * log10(e / self.floor)
        return self.snr_db

    def process(self, const short[::1] x not None):
        """Feed one frame; returns the band SNR in dB (energy, band_energy, peak are updated)."""
        if x.shape[0] == 0:
            raise ValueError("empty frame")
        with nogil:
            self.frame(&x[0], x.shape[0])
        return self.snr_db


def level_stats(const short[::1] x not None):
    """(sum of squares, peak |x|, full-scale samples) of an int16 array."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double s = 0.0, v
    cdef int pk = 0, a
    cdef long clip = 0
    with nogil:
        for i in range(n):
            v = x[i]
            s += v * v
            a = x[i] if x[i] >= 0 else -(<int> x[i])
            if a > pk:
                pk = a
            clip += (x[i] >= 32767 or x[i] <= -32767)
    return s, pk, clip


cdef class SegCore:
    """Utterance endpointer over fixed frames of 16 kHz int16 audio and per-frame raw speech flags.

    Every sample pushed ends up either in exactly one emitted utterance or in `discarded` (silence older than
    the pre-roll, or speech rejected as too short). Times are stream sample indices, never wall clock.
    Emitted utterances are appended to `ready` as (start, end, speech_start, speech_end, int16 array)."""

    cdef short *buf
    cdef Py_ssize_t cap, off, blen     # live audio is buf[off : off+blen], first sample at stream index bstart
    cdef readonly i64 bstart, samples_in, discarded, speech_samples
    cdef readonly int frame_len
    cdef readonly i64 pre_roll, min_speech, max_len, search
    # writable between pushes: the stream shortens it after a complete sentence, lengthens it after "and ..."
    cdef public i64 end_silence
    cdef readonly bint in_utt
    cdef readonly i64 utt_start, speech_start, speech_end, speech_count
    # ring of per-frame energy and raw flag, indexed by absolute frame number (frames are aligned to stream time)
    cdef double *ring_e
    cdef char *ring_f
    cdef Py_ssize_t nring
    cdef public list ready

    def __cinit__(self, int frame_len, i64 pre_roll, i64 end_silence, i64 min_speech, i64 max_len):
        if frame_len <= 0 or pre_roll < 0 or end_silence <= 0 or min_speech < 0 or max_len < 2 * frame_len:
            raise ValueError("invalid segmenter configuration")
        self.frame_len = frame_len
        self.pre_roll = pre_roll
        self.end_silence = end_silence
        self.min_speech = min_speech
        self.max_len = max_len
        # the cut is searched in the last 2 s (at most half the maximum length) before the limit
        self.search = min(<i64> 32000, max_len // 2)
        self.nring = <Py_ssize_t> (max_len // frame_len + 4)
        self.cap = <Py_ssize_t> (max_len + pre_roll + 4 * frame_len + 16000)
        self.buf = <short *> malloc(self.cap * sizeof(short))
        self.ring_e = <double *> malloc(self.nring * sizeof(double))
        self.ring_f = <char *> malloc(self.nring)
        if self.buf == NULL or self.ring_e == NULL or self.ring_f == NULL:
            raise MemoryError()
        self.ready = []
        self.off = 0
        self.blen = 0
        self.bstart = 0
        self.samples_in = 0
        self.discarded = 0
        self.speech_samples = 0
        self.in_utt = False

    def __dealloc__(self):
        free(self.buf)
        free(self.ring_e)
        free(self.ring_f)

    cdef void _drop_to(self, i64 new_start) noexcept:
        # forget audio before stream index new_start (caller accounts for it)
        cdef i64 d = new_start - self.bstart
        if d <= 0:
            return
        self.off += d
        self.blen -= d
        self.bstart = new_start

    cdef int _append(self, const short *x, Py_ssize_t n) except -1:
        if self.off + self.blen + n > self.cap:
            memmove(self.buf, self.buf + self.off, self.blen * sizeof(short))
            self.off = 0
            if self.blen + n > self.cap:   # cannot happen with max_len bounding utterances; be safe anyway
                self.cap = (self.blen + n) * 2
                self.buf = <short *> realloc(self.buf, self.cap * sizeof(short))
                if self.buf == NULL:
                    raise MemoryError()
        memcpy(self.buf + self.off + self.blen, x, n * sizeof(short))
        self.blen += n
        return 0

    cdef object _copy(self, i64 start, i64 end):
        cdef cnp.ndarray[cnp.int16_t, ndim=1] a = np.empty(end - start, dtype=np.int16)
        if end > start:
            memcpy(cnp.PyArray_DATA(a), self.buf + self.off + (start - self.bstart), (end - start) * sizeof(short))
        return a

    cdef void _close(self, i64 end, i64 speech_end):
        # utterance [utt_start, end) ends; emit it or discard it
        if self.speech_count >= self.min_speech and self.speech_count > 0:
            self.ready.append((self.utt_start, end, self.speech_start, speech_end, self._copy(self.utt_start, end)))
        else:
            self.discarded += end - self.utt_start
        self._drop_to(end)
        self.in_utt = False

    cdef void _cut_long(self, i64 frame_end):
        # place the cut at the quietest frame in the search window before the limit; ties go to the latest
        cdef i64 first = (frame_end - self.search) // self.frame_len
        cdef i64 last = frame_end // self.frame_len - 1
        cdef i64 fi, best = -1, cut
        cdef double be = 0.0, e
        cdef i64 lo = self.utt_start // self.frame_len + 1
        if first < lo:
            first = lo
        fi = first
        while fi <= last:
            e = self.ring_e[fi % self.nring]
            if best < 0 or e <= be:
                best = fi
                be = e
            fi += 1
        if best < 0:
            cut = frame_end
        else:
            cut = best * self.frame_len + self.frame_len // 2
            if cut <= self.utt_start:
                cut = frame_end
        self.ready.append((self.utt_start, cut, self.speech_start, min(self.speech_end, cut),
                           self._copy(self.utt_start, cut)))
        self._drop_to(cut)
        self.utt_start = cut
        self.speech_start = cut
        if self.speech_end < cut:
            self.speech_end = cut
        # raw speech after the cut (frames wholly after it)
        self.speech_count = 0
        fi = cut // self.frame_len + 1
        while fi <= last:
            if self.ring_f[fi % self.nring]:
                self.speech_count += self.frame_len
            fi += 1

    cdef int push_frame(self, const short *x, Py_ssize_t n, bint speech, double energy) except -1:
        cdef i64 fstart = self.samples_in
        cdef i64 fend = fstart + n
        cdef i64 fidx = fstart // self.frame_len
        cdef i64 keep_from
        self._append(x, n)
        self.samples_in = fend
        self.ring_e[fidx % self.nring] = energy
        self.ring_f[fidx % self.nring] = speech
        if speech:
            self.speech_samples += n
        if not self.in_utt:
            if speech:
                self.in_utt = True
                keep_from = max(self.bstart, fstart - self.pre_roll)
                self.discarded += keep_from - self.bstart
                self._drop_to(keep_from)
                self.utt_start = keep_from
                self.speech_start = fstart
                self.speech_end = fend
                self.speech_count = n
            else:
                keep_from = fend - self.pre_roll
                if keep_from > self.bstart:
                    self.discarded += keep_from - self.bstart
                    self._drop_to(keep_from)
            return 0
        if speech:
            self.speech_end = fend
            self.speech_count += n
        elif fend - self.speech_end >= self.end_silence:
            self._close(fend, self.speech_end)
            return 0
        if fend - self.utt_start >= self.max_len:
            self._cut_long(fend)
        return 0

    def push(self, const short[::1] x not None, bint speech, double energy):
        if x.shape[0] == 0 or x.shape[0] > self.frame_len:
            raise ValueError(f"a frame holds 1..{self.frame_len} samples, got {x.shape[0]}")
        self.push_frame(&x[0], x.shape[0], speech, energy)

    def finish(self, const short[::1] tail not None):
        """End of stream: append the tail (shorter than a frame, may be empty) as silence and close."""
        if tail.shape[0] > 0:
            self._append(&tail[0], tail.shape[0])
            self.samples_in += tail.shape[0]
        if self.in_utt:
            self._close(self.samples_in, self.speech_end)
        else:
            self.discarded += self.samples_in - self.bstart
            self._drop_to(self.samples_in)

    def partial(self):
        if not self.in_utt:
            return None
        return self.utt_start, self._copy(self.utt_start, self.bstart + self.blen)


# VAD kinds for FrontCore
HYBRID = 0
WEBRTC = 1
SILERO = 2
STATUS_NONFINITE = NONFINITE


cdef class VadCore:
    """Per-frame speech decision on 16 kHz int16 frames. `raw` is the frame's own decision; `speaking` adds a
    hangover of `hang_frames` frames (hysteresis: on at once, off only after the hangover).

    hybrid: band SNR over the adaptive noise floor above t_on dB, or webrtcvad says speech and the band SNR is
    above t_low dB (webrtcvad alone fires on broadband noise; our band energy alone misses weak onsets).
    While speaking the thresholds drop to t_stay / t_stay_low (hysteresis), so that word endings fading into
    noise do not open a gap.
    webrtc: webrtcvad's decision. silero: a Python callable returning the decision for the frame."""

    cdef readonly BandEnergy feat
    cdef int kind, frame_len
    cdef object frame_arr     # reusable int16 ndarray handed to webrtcvad / Silero
    cdef short *frame_ptr
    cdef object wproc, whandle, silero
    cdef public double t_on, t_low, t_stay, t_stay_low
    cdef int hang_frames, hang_left
    cdef readonly bint speaking, raw

    def __cinit__(self, int kind, int frame_len, object wproc, object whandle, object silero,
                  double t_on, double t_low, double t_stay, double t_stay_low, int hang_frames):
        self.t_stay = t_stay
        self.t_stay_low = t_stay_low
        self.kind = kind
        self.frame_len = frame_len
        self.feat = BandEnergy(16000.0, frame_len / 16000.0)
        self.wproc = wproc
        self.whandle = whandle
        self.silero = silero
        self.t_on = t_on
        self.t_low = t_low
        self.hang_frames = hang_frames
        self.hang_left = 0
        self.frame_arr = np.zeros(frame_len, dtype=np.int16)
        self.frame_ptr = <short *> cnp.PyArray_DATA(self.frame_arr)
        self.speaking = False
        self.raw = False

    cdef bint decide(self, const short *x) except -1:
        cdef int n = self.frame_len
        cdef double snr
        cdef bint raw
        with nogil:
            snr = self.feat.frame(x, n)
        if self.kind == HYBRID:
            # webrtcvad runs on every frame even when the band SNR alone decides: its noise model adapts
            # frame by frame, and skipping frames makes it fire on steady noise
            memcpy(self.frame_ptr, x, n * sizeof(short))
            raw = self.wproc(self.whandle, 16000, self.frame_arr, n)
            # dual threshold: while speaking, weaker frames (word endings in noise) still count as speech
            if self.speaking:
                raw = snr > self.t_stay or (raw and snr > self.t_stay_low)
            else:
                raw = snr > self.t_on or (raw and snr > self.t_low)
        elif self.kind == WEBRTC:
            memcpy(self.frame_ptr, x, n * sizeof(short))
            raw = self.wproc(self.whandle, 16000, self.frame_arr, n)
        else:
            memcpy(self.frame_ptr, x, n * sizeof(short))
            raw = self.silero(self.frame_arr)
        self.raw = raw
        if raw:
            self.hang_left = self.hang_frames
            self.speaking = True
        elif self.hang_left > 0:
            self.hang_left -= 1
        else:
            self.speaking = False
        return raw

    def process(self, const short[::1] frame not None):
        """One frame of exactly frame_len samples; returns `speaking` (raw decision in `.raw`)."""
        if frame.shape[0] != self.frame_len:
            raise ValueError(f"a VAD frame holds exactly {self.frame_len} samples, got {frame.shape[0]}")
        self.decide(&frame[0])
        return self.speaking


cdef class FrontCore:
    """The per-participant hot path: downmix + resample -> 16 kHz frames -> VAD (features, decision, hangover)
    -> level meter -> segmenter. The only Python-level call per frame is the webrtcvad (or Silero) decision."""

    cdef Polyphase rs
    cdef readonly VadCore vad
    cdef readonly SegCore seg
    cdef bint stereo
    cdef int frame_len
    cdef short *pend          # 16 kHz samples not yet forming a whole frame
    cdef Py_ssize_t npend, pcap
    cdef short *out16         # resampler output of the current push (reused)
    cdef Py_ssize_t ocap
    cdef readonly double last_sumsq
    cdef readonly int last_peak, last_n
    cdef readonly long last_clipped
    cdef long clip_acc

    def __cinit__(self, Polyphase rs not None, bint stereo, VadCore vad not None, SegCore seg not None):
        self.rs = rs
        self.stereo = stereo
        self.vad = vad
        self.frame_len = vad.frame_len
        self.seg = seg
        if seg.frame_len != vad.frame_len:
            raise ValueError("VAD and segmenter frame lengths differ")
        self.pcap = vad.frame_len
        self.pend = <short *> malloc(self.pcap * sizeof(short))
        self.ocap = 4096
        self.out16 = <short *> malloc(self.ocap * sizeof(short))
        if self.pend == NULL or self.out16 == NULL:
            raise MemoryError()
        self.npend = 0

    def __dealloc__(self):
        free(self.pend)
        free(self.out16)

    cdef int _frame(self, const short *x) except -1:
        cdef int n = self.frame_len
        cdef bint raw = self.vad.decide(x)
        self.last_sumsq = self.vad.feat.energy * n
        self.last_peak = self.vad.feat.peak
        self.last_n = n
        self.last_clipped = self.clip_acc
        self.clip_acc = 0
        self.seg.push_frame(x, n, raw, self.vad.feat.energy)
        return 0

    cdef int _consume(self, const short *y, Py_ssize_t m) except -1:
        # frame the resampled samples: complete the pending frame, then whole frames straight from y
        cdef Py_ssize_t i = 0, take, fl = self.frame_len
        if self.npend > 0:
            take = min(fl - self.npend, m)
            memcpy(self.pend + self.npend, y, take * sizeof(short))
            self.npend += take
            i = take
            if self.npend == fl:
                self._frame(self.pend)
                self.npend = 0
        while i + fl <= m:
            self._frame(y + i)
            i += fl
        if i < m:
            memcpy(self.pend + self.npend, y + i, (m - i) * sizeof(short))
            self.npend += m - i
        return 0

    def push(self, const short[::1] pcm not None):
        """pcm: validated int16 interleaved input. Returns the list of ready utterance tuples, or None."""
        cdef Py_ssize_t n = pcm.shape[0] // 2 if self.stereo else pcm.shape[0]
        cdef Py_ssize_t count = self.rs._process_i16(&pcm[0] if pcm.shape[0] else NULL, n, self.stereo)
        cdef short *o
        self.clip_acc += self.rs.clipped
        if count:
            if count > self.ocap:
                o = <short *> realloc(self.out16, count * sizeof(short))
                if o == NULL:
                    raise MemoryError()
                self.out16 = o
                self.ocap = count
            with nogil:
                self.rs._scratch_to_i16(self.out16, count)
            self._consume(self.out16, count)
        if self.seg.ready:
            out = self.seg.ready
            self.seg.ready = []
            return out
        return None

    def finish(self):
        cdef cnp.ndarray[cnp.int16_t, ndim=1] y = self.rs.flush_i16()
        cdef cnp.ndarray[cnp.int16_t, ndim=1] tail
        if y.shape[0]:
            self._consume(<short *> cnp.PyArray_DATA(y), y.shape[0])
        tail = np.empty(self.npend, dtype=np.int16)
        if self.npend:
            memcpy(cnp.PyArray_DATA(tail), self.pend, self.npend * sizeof(short))
        self.npend = 0
        self.seg.finish(tail)
        out = self.seg.ready
        self.seg.ready = []
        return out
