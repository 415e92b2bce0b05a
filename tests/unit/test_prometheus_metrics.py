"""The worker's Prometheus metrics (stream/metrics.py): a render after some events holds the expected samples."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stream_reco.stream.metrics import LATENCY_BUCKETS_S, WorkerMetrics
from stream_reco.stream.store import WorkerStats


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a render, keyed by (name, sorted labels)."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_events_by_type_and_feedback_per_experiment_variant() -> None:
    metrics = WorkerMetrics()
    for event_type in ["view", "view", "purchase", "impression", "impression", "click", "bogus"]:
        metrics.event(event_type)
    got = samples(metrics)
    assert got[("stream_reco_events_total", (("event_type", "view"),))] == 2
    assert got[("stream_reco_events_total", (("event_type", "purchase"),))] == 1
    assert got[("stream_reco_events_total", (("event_type", "add_to_cart"),))] == 0  # every type's series exists
    assert got[("stream_reco_events_total", (("event_type", "other"),))] == 1  # bounded: unknown types folded
    assert got[("stream_reco_impressions_total", (("experiment", "none"), ("variant", "none")))] == 2
    assert got[("stream_reco_clicks_total", (("experiment", "none"), ("variant", "none")))] == 1
    assert sum(v for (name, _), v in got.items() if name == "stream_reco_events_total") == 7


def test_configured_experiment_series_start_at_zero() -> None:
    metrics = WorkerMetrics(experiments={"home-2026": ["control", "personal"]})
    got = samples(metrics)
    for variant in ("control", "personal"):
        assert got[("stream_reco_impressions_total", (("experiment", "home-2026"), ("variant", variant)))] == 0
        assert got[("stream_reco_clicks_total", (("experiment", "home-2026"), ("variant", variant)))] == 0


def test_dead_letters_by_topic() -> None:
    metrics = WorkerMetrics(topics=["shop.events", "shop.catalog"])
    metrics.dead_letter("shop.events")
    metrics.dead_letter("shop.events")
    got = samples(metrics)
    assert got[("stream_reco_dead_letters_total", (("topic", "shop.events"),))] == 2
    assert got[("stream_reco_dead_letters_total", (("topic", "shop.catalog"),))] == 0


def test_latency_histogram_counts_and_buckets() -> None:
    metrics = WorkerMetrics()
    for latency in (0.003, 0.02, 0.02, 0.7, 9.0):
        metrics.list_published(latency)
    got = samples(metrics)
    assert got[("stream_reco_event_to_list_seconds_count", ())] == 5
    assert abs(got[("stream_reco_event_to_list_seconds_sum", ())] - 9.743) < 1e-9
    buckets = {dict(labels)["le"]: v for (name, labels), v in got.items()
               if name == "stream_reco_event_to_list_seconds_bucket"}
    assert buckets["0.005"] == 1 and buckets["0.025"] == 3 and buckets["1.0"] == 4 and buckets["5.0"] == 4
    assert buckets["+Inf"] == 5
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1


def test_worker_stats_are_read_at_scrape_time() -> None:
    stats = WorkerStats()
    metrics = WorkerMetrics(stats)
    stats.counts.update(lists=4, lists_refreshed=2, lists_refilled=1, pulls=3, dead_letter=5)
    got = samples(metrics)
    assert got[("stream_reco_lists_total", (("kind", "pushed"),))] == 4
    assert got[("stream_reco_lists_total", (("kind", "refreshed"),))] == 3
    assert got[("stream_reco_lists_total", (("kind", "pulled"),))] == 3
    assert got[("stream_reco_worker_dead_letter_total", ())] == 5
    assert got[("stream_reco_uptime_seconds", ())] >= 0
    stats.counts["lists"] += 1  # a later scrape sees the change: nothing is copied at construction
    assert samples(metrics)[("stream_reco_lists_total", (("kind", "pushed"),))] == 5


def test_two_workers_in_one_process_do_not_collide() -> None:
    first, second = WorkerMetrics(WorkerStats()), WorkerMetrics(WorkerStats())
    first.event("view")
    assert samples(first)[("stream_reco_events_total", (("event_type", "view"),))] == 1
    assert samples(second)[("stream_reco_events_total", (("event_type", "view"),))] == 0


def test_openmetrics_when_asked() -> None:
    body, content_type = WorkerMetrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def _worker(tmp_path: Any) -> Any:
    from stream_reco.settings import Settings
    from stream_reco.stream.app import RecoWorker

    return RecoWorker(Settings.load(env={}).replace(data_dir=str(tmp_path), web_port=6066))


def test_healthz_is_503_until_applying_and_once_stopping(tmp_path: Any) -> None:
    worker = _worker(tmp_path)
    view = worker.http_view
    assert view.health() == ({"status": "starting", "applying": False, "assigned_partitions": []}, 503)
    worker.applying.set()
    worker.active_partitions.update({2, 0})  # in place, as the rebalance callback does
    assert view.health() == ({"status": "ok", "applying": True, "assigned_partitions": [0, 2]}, 200)
    worker.app._stopped.set()  # what mode's Service.stop does first
    assert view.health()[1] == 503 and view.health()[0]["status"] == "stopping"


def test_the_routes_answer_over_http(tmp_path: Any) -> None:
    """`/metrics` and `/healthz` through the worker's real aiohttp app (content type, status, body)."""
    from aiohttp.test_utils import TestClient, TestServer

    worker = _worker(tmp_path)
    worker.app.web.init_server()
    worker.stats.counts["lists"] = 2
    worker.metrics.event("view")

    async def scrape() -> tuple[int, str, str, int]:
        async with TestClient(TestServer(worker.app.web.web_app)) as client:
            metrics = await client.get("/metrics")
            health = await client.get("/healthz")
            return metrics.status, metrics.headers["Content-Type"], await metrics.text(), health.status

    status, content_type, text, health = asyncio.run(scrape())
    assert status == 200 and content_type.startswith("text/plain") and health == 503
    assert 'stream_reco_events_total{event_type="view"} 1.0' in text
    assert 'stream_reco_lists_total{kind="pushed"} 2.0' in text
