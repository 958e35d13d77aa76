"""Prometheus metrics of the live service, in one registry per application (tests build many apps).

Names follow Prometheus conventions (base units, `_total` counters). Labels are low-cardinality: never a
participant or interview id. Values that are state of live objects (speech ratio, STT lag, queue depth)
are read at scrape time through callbacks the room registry installs, so they never go stale.
"""

from __future__ import annotations

import re
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Speech end -> final sent: the target is p50 <= 0.7 s, p95 <= 1.0 s, so resolve finely around there.
_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
_RTT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
_JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
_LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_JOIN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rooms_active = Gauge("interview_rooms_active", "Interview rooms with at least one participant",
                                  registry=r)
        self.participants_active = Gauge("interview_participants_active", "Connected participants by role",
                                         ["role"], registry=r)
        self.malloc_trims = Counter("malloc_trims_total", "glibc malloc_trim(0) runs after rooms closed "
                                    "(MALLOC_TRIM)", registry=r)
        self.joins = Counter("whip_joins_total", "WHIP sessions created (resumes included)", ["role"], registry=r)
        self.join_seconds = Histogram("whip_join_seconds", "WHIP offer received -> answer returned",
                                      buckets=_JOIN_BUCKETS, registry=r)
        self.tracks_received = Counter("webrtc_tracks_received_total", "Media tracks peers offered to send to the "
                                       "server, by kind (the pages send video only peer to peer)", ["kind"],
                                       registry=r)
        for kind in ("audio", "video"):
            self.tracks_received.labels(kind=kind)
        # The call between participants (adapters.call): signalling, relay, and the quality the pages measure.
        self.call_members = Gauge("call_members", "Participants with an open call channel", registry=r)
        self.call_signals = Counter("call_signals_total", "Signalling messages passed between participants",
                                    ["type"], registry=r)
        self.call_dropped = Counter("call_messages_dropped_total", "Call channel messages dropped", ["reason"],
                                    registry=r)
        self.call_relayed = Gauge("call_relayed_streams", "Audio streams relayed through the server (one per "
                                  "direction of a pair without a peer-to-peer path)", registry=r)
        self.call_rtt = Histogram("call_rtt_seconds", "Round-trip time between participants, as pages report it",
                                  ["path"], buckets=_RTT_BUCKETS, registry=r)
        self.call_jitter = Histogram("call_jitter_seconds", "Audio jitter between participants, as pages report it",
                                     ["path"], buckets=_JITTER_BUCKETS, registry=r)
        self.call_loss = Histogram("call_packet_loss_ratio", "Audio packet loss between participants, as pages "
                                   "report it", ["path"], buckets=_LOSS_BUCKETS, registry=r)
        self.frames_in = Counter("audio_frames_in_total", "Audio frames received from participants", registry=r)
        self.frames_dropped = Counter("audio_frames_dropped_total", "Audio frames not processed", ["reason"],
                                      registry=r)
        self.audio_seconds = Counter("audio_seconds_total", "Seconds of participant audio processed", registry=r)
        self.speech_ratio = Gauge("audio_speech_ratio", "Share of processed audio classified as speech (active streams)",
                                  registry=r)
        self.stt_lag = Gauge("stt_lag_seconds", "Largest backlog of untranscribed speech over active streams",
                             registry=r)
        self.final_wait = Gauge("stt_final_wait_seconds", "Longest time a closed utterance has been waiting for its "
                                "final transcript, over active streams (rises only while STT falls behind)",
                                registry=r)
        self.final_latency = Histogram("final_latency_seconds",
                                       "Speech end -> segment.final sent on the analysis data channels",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.segments_final = Counter("segments_final_total", "Final segments produced", registry=r)
        self.segments_persisted = Counter("segments_persisted_total", "Final segments written to the store",
                                          ["result"], registry=r)
        # a final decoded again with the conversation as context (segment.revised): not a new final
        self.segments_revised = Counter("segments_revised_total", "Revisions of final segments produced", registry=r)
        self.revisions_persisted = Counter("segment_revisions_persisted_total",
                                           "Revisions of final segments written to the store", ["result"], registry=r)
        self.persist_pending = Gauge("segments_persist_pending", "Final segments and revisions waiting to be written",
                                     registry=r)
        self.messages_sent = Counter("analysis_messages_sent_total", "Messages sent on analysis data channels",
                                     ["type"], registry=r)
        self.messages_dropped = Counter("analysis_messages_dropped_total",
                                        "Analysis messages not sent (slow or closed viewer)", ["reason"], registry=r)
        self.evidence_rejected = Counter("analysis_evidence_rejected_total", "Scorecard evidence dropped: the quote "
                                         "is not in the transcript segment it cites", ["provider"], registry=r)
        self.analysis_runs = Counter("analysis_provider_runs_total", "Scorecard provider calls by result",
                                     ["provider", "status"], registry=r)
        self.stt_queue_depth = Gauge("stt_queue_depth", "Transcriptions waiting for a worker", registry=r)
        self.audit_pending = Gauge("audit_entries_pending", "Audit entries recorded and not yet written", registry=r)
        self.audit_written = Counter("audit_entries_written_total", "Audit entries written to the store", registry=r)
        self.audit_spilled = Counter("audit_entries_spilled_total", "Audit entries past AUDIT_QUEUE_MAX, appended to "
                                     "DATA_DIR/audit.spill.jsonl (written from there later)", registry=r)
        self.audit_failures = Counter("audit_write_failures_total", "Failed audit writes (each retried; entries "
                                      "stay queued) and entries recorded after the audit log closed", registry=r)
        self.guidance_alerts = Counter("guidance_alerts_total", "Protected-topic alerts sent to interviewers",
                                       ["topic"], registry=r)
        self.guidance_latency = Histogram("guidance_latency_seconds", "segment.final sent -> its live guidance "
                                          "events sent (queue wait + sentence embedding)",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.journal_unreadable = Counter("segment_journal_unreadable_total", "Shared segment journal entries this "
                                          "node cannot store, logged once: corrupt (deleted) or key (sealed with "
                                          "another master key: kept for a node that has it)", ["reason"], registry=r)
        for reason in ("corrupt", "key"):
            self.journal_unreadable.labels(reason=reason)
        self.errors = Counter("errors_total", "Errors by kind", ["kind"], registry=r)
        for kind in ("bad_request", "unauthorized", "forbidden", "not_found", "too_large", "stt", "persist",
                     "track", "webrtc", "stream", "decrypt", "guidance"):
            self.errors.labels(kind=kind)
        r.register(_ThreadsCollector())

    def bind_live(self, *, speech_ratio: Callable[[], float], stt_lag: Callable[[], float],
                  final_wait: Callable[[], float] | None = None) -> None:
        """Install the scrape-time readers of live state (the room registry owns that state)."""
        self.speech_ratio.set_function(speech_ratio)
        self.stt_lag.set_function(stt_lag)
        if final_wait is not None:
            self.final_wait.set_function(final_wait)

    def bind_stt(self, *, queue_depth: Callable[[], float],
                 stats: Callable[[], Any] | None = None) -> None:
        """`stats` returns the scheduler's `SchedulerStats` (busy seconds and decodes by kind)."""
        self.stt_queue_depth.set_function(queue_depth)
        if stats is not None:
            self.registry.register(_SttCollector(stats))

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ThreadsCollector:
    """This process's Python threads by name, numbering dropped (`ThreadPoolExecutor-3_1` counts under
    `ThreadPoolExecutor-3`, one pool): which pool holds the threads the process's thread count shows. Python 3.11
    does not give OS threads their names, so nothing outside the process can tell them apart."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("python_threads", "Python threads of this process by name (pool)", labels=["name"])
        for name, n in sorted(Tally(thread_kind(t.name) for t in threading.enumerate()).items()):
            family.add_metric([name], n)
        yield family


def thread_kind(name: str) -> str:
    """A thread's name without its number within its pool: `ThreadPoolExecutor-0_3` -> `ThreadPoolExecutor-0`,
    `Thread-7 (serve)` -> `Thread (serve)`, `stt_1` -> `stt`."""
    return re.sub(r"^Thread-\d+", "Thread", re.sub(r"_\d+$", "", name))


class _SttCollector:
    """Speech-to-text worker time and decodes by kind, read from the scheduler at scrape time."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Any:
        st = self._stats()
        busy = CounterMetricFamily("stt_busy_seconds", "Worker seconds spent decoding, by kind of job",
                                   labels=["kind"])
        jobs = CounterMetricFamily("stt_decodes", "Decodes run, by kind of job", labels=["kind"])
        for kind, seconds in st.busy_by_kind.items():
            busy.add_metric([kind], seconds)
            jobs.add_metric([kind], st.jobs_by_kind[kind])
        yield busy
        yield jobs
        yield CounterMetricFamily("stt_redecodes", "Decodes run twice because the first result stopped short of "
                                  "its audio (the repetition penalty of a prompted decode can end a sentence early)",
                                  value=st.redecodes)
        yield CounterMetricFamily("stt_finals_hurried", "Finals decoded greedily (beam 1) because other finals "
                                  "waited behind them (STT_HURRY)", value=st.finals_hurried)
        yield CounterMetricFamily("stt_revisions_dropped", "Revisions of finals never decoded: pushed out of the "
                                  "full revision queue (speech-to-text busy with live work) or left at shutdown",
                                  value=st.revisions_dropped)
