"""Creating the contract's topics with the partition counts and configs from the settings.

Topics are created explicitly (the local broker disables auto-creation) because a topic auto-created by
a producer gets one partition, which breaks faust's co-partitioning of tables with their source topic.
"""

from __future__ import annotations

import asyncio
import logging

import click
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from stream_reco.settings import Settings

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5  # a retriable creation error is tried this often
CREATE_RETRY_S = 1.0  # ... waiting this much longer each time
VISIBLE_TIMEOUT_S = 30.0  # longest wait for created topics to show in the broker's metadata
VISIBLE_POLL_S = 0.2

# the latest list per visitor is what matters: compaction keeps exactly that
COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}


#: suffix of the internal topic of login joins (stream/joins.py), after `app_id`
JOINS_SUFFIX = "-joins"


def joins_topic(settings: Settings) -> str:
    """The internal topic on which workers send each other login joins: `<app_id>-joins`.

    Workers never write to the shop's topics (docs/contracts.md); the shop never writes this one, so it can be
    ACL'd to the workers' principal alone."""
    return settings.app_id + JOINS_SUFFIX


def topic_specs(settings: Settings) -> list[NewTopic]:
    """The four contract topics and the internal joins topic. Events and recommendations share the partition
    count and key (the visitor), so one visitor's events and lists stay on matching partitions; the joins
    topic has the same count too, so that faust assigns its partition p to the worker of events partition p
    (co-partitioning: a join record keyed by a visitor is handled where that visitor's state lives)."""
    p, r = settings.partitions, settings.replication_factor
    max_bytes = {"max.message.bytes": str(max(settings.max_message_bytes * 2, 1_048_588))}
    return [
        NewTopic(settings.events_topic, p, r, topic_configs=dict(max_bytes)),
        NewTopic(settings.catalog_topic, p, r, topic_configs={**COMPACTED, **max_bytes}),
        NewTopic(settings.recommendations_topic, p, r, topic_configs=dict(COMPACTED)),
        NewTopic(settings.dead_letter_topic, p, r, topic_configs=dict(max_bytes)),
        NewTopic(joins_topic(settings), p, r, topic_configs=dict(max_bytes)),
    ]


async def ensure_topics_async(settings: Settings, extra: list[NewTopic] | None = None) -> list[str]:
    """Create whichever of the topics do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in [*topic_specs(settings), *(extra or [])] if t.name not in existing]
        created = []
        for topic in wanted:
            if await _create(admin, topic):
                created.append(topic.name)
        if created:
            log.info("created topics %s", created)
            await wait_visible(admin, {t.name: t.num_partitions for t in wanted if t.name in created})
        return created
    finally:
        await admin.close()


async def wait_visible(admin: AIOKafkaAdminClient, partitions: dict[str, int],
                       timeout_s: float = VISIBLE_TIMEOUT_S) -> bool:
    """Wait until the broker's metadata shows every topic of `partitions` with that many partitions, each with
    a leader; False (and a warning) if it does not within `timeout_s`.

    Why: a broker that has only just started (the demo's, a CI job's) acknowledges a creation before its
    metadata shows the topic. A faust worker that subscribes in that moment is told the events topic is missing,
    ignores it ("Ignoring missing topic"), and consumes nothing until its next metadata refresh, minutes later:
    the demo published no list at all."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(sorted(partitions))
        ready = {t["topic"] for t in described
                 if t["error_code"] == 0 and len(t["partitions"]) == partitions.get(t["topic"])
                 and all(p["leader"] >= 0 for p in t["partitions"])}
        missing = sorted(set(partitions) - ready)
        if not missing:
            return True
        if asyncio.get_running_loop().time() >= deadline:
            log.warning("topics %s created but not in the broker's metadata after %.0f s", missing, timeout_s)
            return False
        await asyncio.sleep(VISIBLE_POLL_S)


async def _create(admin: AIOKafkaAdminClient, topic: NewTopic) -> bool:
    """Create one topic; False when it exists already (another worker won the race).

    aiokafka returns the broker's per-topic error codes instead of raising them, so they are read here:
    a failed creation would otherwise pass unnoticed until a producer met a missing topic. A retriable
    error (a freshly started broker answering "timed out") is retried a few times.
    """
    for attempt in range(CREATE_ATTEMPTS):
        try:
            response = await admin.create_topics([topic])
        except TopicAlreadyExistsError:  # older aiokafka versions raise it
            return False
        code = next((err[1] for err in response.topic_errors if err[0] == topic.name), 0)
        if code == 0:
            return True
        error = for_code(code)
        if error is TopicAlreadyExistsError:
            return False
        if not error.retriable or attempt == CREATE_ATTEMPTS - 1:
            raise KafkaError(f"creating topic {topic.name!r} failed: {error.__name__} (code {code})")
        await asyncio.sleep(CREATE_RETRY_S * (attempt + 1))
    return False


def ensure_topics(settings: Settings) -> list[str]:
    return asyncio.run(ensure_topics_async(settings))


@click.command("topics")
@click.pass_obj
def topics_cmd(state: object) -> None:
    """Create the events, catalog, recommendations, dead-letter and internal joins topics if missing."""
    settings: Settings = state.settings  # type: ignore[attr-defined]
    created = ensure_topics(settings)
    for spec in topic_specs(settings):
        mark = "created" if spec.name in created else "exists"
        click.echo(f"{spec.name}\t{spec.num_partitions} partitions\t{mark}")
