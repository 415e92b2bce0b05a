"""`GET /metrics` and `GET /healthz` of one real worker on the real broker (issue 14, item 4).

After N events (and one bad message) the worker's `/metrics` counts exactly N events, one dead letter from the
events topic, and one latency observation per list it published; `/healthz` answers 200 once the worker applies
events. The worker and its topics are this module's own, so the counts are exact.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_reco.settings import Settings
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, free_ports, produce, send_events, send_items
from .test_worker import T0, catalog

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def observed(kafka_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, int]]:
    """One worker with its HTTP port, on topics of its own; yields (settings, port)."""
    tag = uuid.uuid4().hex[:10]
    port = free_ports(1)[0]
    settings = kafka_settings.replace(
        events_topic=f"m-{tag}.events", catalog_topic=f"m-{tag}.catalog",
        recommendations_topic=f"m-{tag}.recommendations", dead_letter_topic=f"m-{tag}.dead-letter",
        app_id=f"m-{tag}", partitions=3, list_size=5, web_port=port,
        data_dir=str(tmp_path_factory.mktemp("metrics")),
    )
    ensure_topics(settings)
    send_items(settings, catalog())
    worker = WorkerProcess(settings, web_port=port)
    try:
        worker.wait_ready()
        yield settings, port
        assert worker.proc.poll() is None, f"the worker keeps running:\n{worker.output()}"
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_healthz_is_200_once_the_worker_applies_events(observed: tuple[Settings, int]) -> None:
    _, port = observed
    deadline = time.monotonic() + TIMEOUT_S
    while (answer := get(port, "/healthz"))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, body = answer
    assert status == 200, body
    doc = orjson.loads(body)
    assert doc["status"] == "ok" and doc["applying"] is True
    assert sorted(doc["assigned_partitions"]) == [0, 1, 2]  # the only worker of its group


def test_metrics_count_the_events_dead_letters_and_lists(observed: tuple[Settings, int]) -> None:
    settings, port = observed
    types = ["view", "view", "add_to_cart", "view", "purchase", "view"]
    events = [{"event_id": f"m-{i}", "event_type": t, "item_id": "mixer-1", "timestamp": T0 + i * 1000,
               "user_id": f"u-metrics-{i % 3}"} for i, t in enumerate(types)]
    send_events(settings, events)
    asyncio.run(produce(settings, settings.events_topic, [(b"u-metrics-0", b"not json")]))

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        samples = scrape(port)
        done = (total(samples, "stream_reco_events_total") >= len(events)
                and total(samples, "stream_reco_dead_letters_total") >= 1)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert total(samples, "stream_reco_events_total") == len(events)
    for event_type in ("view", "add_to_cart", "purchase"):
        assert samples[("stream_reco_events_total", (("event_type", event_type),))] == types.count(event_type)
    assert samples[("stream_reco_dead_letters_total", (("topic", settings.events_topic),))] == 1
    assert samples[("stream_reco_worker_events_total", ())] == len(events)  # WorkerStats, read at scrape time

    reader = TopicReader(settings, settings.recommendations_topic)
    last = {e["user_id"]: e["event_id"] for e in events}
    reader.wait_for(lambda _: all(any(d["trigger_event_id"] == eid for d in reader.lists_for(v))
                                  for v, eid in last.items()), timeout=TIMEOUT_S)
    published = [orjson.loads(v) for _, v in reader.records]
    assert all(d["trigger_event_id"] is not None for d in published)  # no refresh: every list had a trigger
    samples = scrape(port)
    observations = samples[("stream_reco_event_to_list_seconds_count", ())]
    assert observations == len(published) == samples[("stream_reco_lists_total", (("kind", "pushed"),))]
    assert 1 <= len(published) <= len(events)  # a visitor's events of one batch share a list
    assert samples[("stream_reco_event_to_list_seconds_bucket", (("le", "+Inf"),))] == observations
    assert samples[("stream_reco_impressions_total", (("experiment", "none"), ("variant", "none")))] == 0
