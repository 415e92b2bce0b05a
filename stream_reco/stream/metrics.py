"""The worker's Prometheus metrics (docs/contracts.md, "HTTP": `GET /metrics`): one registry per worker, the
metric objects, and the rendering of the text format.

    stream_reco_events_total{event_type}                 events applied (duplicates and dead letters excluded)
    stream_reco_lists_total{kind=pushed|refreshed|pulled} lists out: pushed on an event, republished by the
                                                          stock refresh, served to a pull
    stream_reco_dead_letters_total{topic}                bad messages dead-lettered, by the topic they came from
    stream_reco_event_to_list_seconds                    histogram: an event's timestamp to its list's publication
    stream_reco_impressions_total{experiment,variant}    impression events
    stream_reco_clicks_total{experiment,variant}         click events
    stream_reco_worker_<counter>_total                   every counter of `WorkerStats` (the periodic "stats" log)
    stream_reco_uptime_seconds                           since the worker started

Design choices, and why:
- A registry per `WorkerMetrics`, never prometheus_client's global one: the unit tests, the benchmark and the
  integration harness build several `RecoWorker` objects in one process, and the global registry refuses a
  second metric of the same name.
- What `WorkerStats` already counts is read at scrape time by a collector (`StatsCollector`), not incremented
  twice in the hot path; only what it cannot say (events by type, dead letters by topic, the latency
  distribution, impressions and clicks) is counted here as it happens.
- Bounded label values: event types come from the schema's enum (anything else is "other"), topics are the few
  the worker consumes, and experiment/variant labels come from configuration only. The experiment and variant of
  a list are not attributed yet (that needs the worker to know which list a `context.list_id` is): impressions
  and clicks are counted under experiment="none", variant="none" for now.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from stream_reco.core.events import EVENT_TYPES
from stream_reco.stream.store import WorkerStats

#: the label value for impressions and clicks not attributed to an experiment (or of a list with none)
NONE = "none"
#: feedback event types counted per experiment and variant (keyed off the event type string alone)
IMPRESSION, CLICK = "impression", "click"
#: an event type outside the schema's enum (cannot happen after validation; keeps the labels bounded anyway)
OTHER = "other"
#: event-to-list latency buckets in seconds: the worker's lists take milliseconds to a few seconds
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: WorkerStats counters summed into each `stream_reco_lists_total` kind
LIST_KINDS: dict[str, tuple[str, ...]] = {
    "pushed": ("lists",),
    "refreshed": ("lists_refreshed", "lists_refilled"),
    "pulled": ("pulls",),
}

_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")


class StatsCollector(Collector):
    """`WorkerStats` read at scrape time: lists out by kind, every counter, and the uptime."""

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        counts = dict(self.stats.counts)  # a copy: the event path may add a counter while this runs
        lists = CounterMetricFamily("stream_reco_lists", "Lists out: pushed on an event, refreshed by the stock "
                                    "refresh, pulled over HTTP", labels=["kind"])
        for kind, names in LIST_KINDS.items():
            lists.add_metric([kind], sum(counts.get(name, 0) for name in names))
        yield lists
        for name, value in sorted(counts.items()):
            yield CounterMetricFamily(f"stream_reco_worker_{_NOT_IN_NAME.sub('_', name)}",
                                      f"WorkerStats counter {name!r} (the worker's periodic stats log)", value=value)
        yield GaugeMetricFamily("stream_reco_uptime_seconds", "Seconds since the worker started",
                                value=time.monotonic() - self.stats.started)


class WorkerMetrics:
    """One worker's registry and metrics; `render` gives the scrape body."""

    def __init__(self, stats: WorkerStats | None = None, topics: Iterable[str] = (),
                 experiments: dict[str, Iterable[str]] | None = None) -> None:
        """`stats`: the worker's counters, read at scrape time. `topics`: the consumed topics, whose dead-letter
        series start at 0. `experiments`: configured experiment name -> variant names, whose impression and
        click series start at 0 (only these and "none" are ever used as labels)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.event_types = frozenset((*EVENT_TYPES, IMPRESSION, CLICK))
        self.events = Counter("stream_reco_events", "Events applied, by event type", ["event_type"],
                              registry=self.registry)
        self.dead_letters = Counter("stream_reco_dead_letters", "Messages dead-lettered, by the topic they came from",
                                    ["topic"], registry=self.registry)
        self.latency = Histogram("stream_reco_event_to_list_seconds",
                                 "Seconds from an event's timestamp to the publication of the list it triggered",
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.impressions = Counter("stream_reco_impressions", "Impression events, by experiment and variant",
                                   ["experiment", "variant"], registry=self.registry)
        self.clicks = Counter("stream_reco_clicks", "Click events, by experiment and variant",
                              ["experiment", "variant"], registry=self.registry)
        # children made once: the event path increments without a label lookup
        self._by_type = {t: self.events.labels(t) for t in (*sorted(self.event_types), OTHER)}
        self._unattributed = {IMPRESSION: self.impressions.labels(NONE, NONE), CLICK: self.clicks.labels(NONE, NONE)}
        for topic in topics:
            self.dead_letters.labels(topic)
        for experiment, variants in (experiments or {}).items():
            for variant in variants:
                self.impressions.labels(experiment, variant)
                self.clicks.labels(experiment, variant)
        if stats is not None:
            self.registry.register(StatsCollector(stats))

    def event(self, event_type: str) -> None:
        """Count an applied event; an impression or a click also per experiment and variant (unattributed)."""
        self._by_type.get(event_type, self._by_type[OTHER]).inc()
        feedback = self._unattributed.get(event_type)
        if feedback is not None:
            feedback.inc()

    def dead_letter(self, topic: str) -> None:
        """Count a dead-lettered message from `topic` (one of the worker's few consumed topics)."""
        self.dead_letters.labels(topic).inc()

    def list_published(self, latency_s: float) -> None:
        """Observe the event-to-list latency of a list published for an event."""
        self.latency.observe(latency_s)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, in the format the `Accept` header asks for (Prometheus text by
        default, OpenMetrics when asked)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
