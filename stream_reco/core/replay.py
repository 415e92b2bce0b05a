"""In-process replay: the same core the workers run, fed from an iterable instead of Kafka.

Used by tests (the Kafka path must give the same final lists), by the evaluation and by the benchmarks'
reference runs. A worker with `batch_size = 1` on a single-partition events topic applies events in log
order and publishes one list per event, exactly like `replay` below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from stream_reco.core.events import CatalogItem, Event, Recommendation
from stream_reco.core.recommender import Recommender


def replay(
    recommender: Recommender,
    events: Iterable[Event],
    items: Iterable[CatalogItem] = (),
    on_list: Callable[[Recommendation], None] | None = None,
) -> dict[str, Recommendation]:
    """Apply the catalog, then every event in order; return each visitor's last published list."""
    for item in items:
        recommender.upsert_item(item)
    final: dict[str, Recommendation] = {}
    for event in events:
        rec = recommender.process(event)
        if rec is None:  # a duplicate event_id publishes nothing, as in the worker
            continue
        final[event.visitor_key] = rec
        if on_list is not None:
            on_list(rec)
    return final
