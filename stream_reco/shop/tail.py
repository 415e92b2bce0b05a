"""Watch the recommendation lists as they are published: `stream-reco tail [--user ID] ...`.

Why it reads without a consumer group: tail is an observer. It must never take partitions away from anything
else, never commit offsets that someone else relies on, and must see *every* partition wherever it runs, so it
assigns all partitions of ``settings.recommendations_topic`` itself and starts at their end (or, with
``--from-beginning``, at their start, which on the compacted topic shows each visitor's current list).

Each list prints as a header line (visitor, trigger event, latency, model version) followed by one line per
item (rank, item id, score, reason); ``--json`` prints the raw JSON values instead, one per line, for
scripts. A message that is not a valid recommendation is reported on stderr and skipped — tail never stops on
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_reco import schemas
from stream_reco.schemas import InvalidMessage
from stream_reco.settings import Settings

log = logging.getLogger(__name__)

CLIENT_ID = "stream-reco-tail"
POLL_TIMEOUT_MS = 200  # longest one fetch waits, so the idle timeout is checked this often
TOPIC_WAIT_S = 1.0  # how often to look again for a topic that does not exist yet
ASSIGN_POLL_S = 0.02  # how often to check whether the partitions are assigned (a metadata round trip)
MAX_RECORDS_PER_POLL = 500


@dataclass(frozen=True, slots=True)
class PublishedList:
    """One message of the recommendations topic. `doc` is the parsed value when it is a JSON object;
    `error` says why it is not a valid recommendation (None when it is)."""

    key: str | None
    doc: dict[str, Any] | None
    raw: bytes
    partition: int
    offset: int
    timestamp_ms: int
    error: str | None = None

    @property
    def visitor(self) -> str:
        doc = self.doc or {}
        return doc.get("user_id") or doc.get("session_id") or self.key or "?"

    @property
    def items(self) -> list[dict[str, Any]]:
        return list((self.doc or {}).get("items") or [])


def _parse(msg: Any) -> PublishedList:
    raw: bytes = msg.value or b""
    key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
    doc: dict[str, Any] | None = None
    error = None
    try:
        parsed = orjson.loads(raw)
        if isinstance(parsed, dict):
            doc = parsed
        schemas.validate("recommendation", parsed)
    except orjson.JSONDecodeError as exc:
        error = f"not valid JSON: {exc}"
    except InvalidMessage as exc:
        error = str(exc)
    return PublishedList(key, doc, raw, msg.partition, msg.offset, msg.timestamp, error)


def _matches(item: PublishedList, user: str | None) -> bool:
    if user is None:
        return True
    doc = item.doc or {}
    return user in (item.key, doc.get("user_id"), doc.get("session_id"))


async def assign_all_partitions(consumer: AIOKafkaConsumer, topic: str,
                                timeout_s: float | None = None) -> list[TopicPartition]:
    """Give a group-less consumer every partition of `topic` (and later-added ones), waiting for the topic
    to be created (a worker may not have started yet). Raises TimeoutError after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    warned = False
    while topic not in await consumer.topics():
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic} does not exist")
        if not warned:
            log.warning("topic %s does not exist yet; waiting for it", topic)
            warned = True
        await asyncio.sleep(TOPIC_WAIT_S)
    consumer.subscribe([topic])  # without a group id aiokafka assigns all partitions itself, no commits
    while not consumer.assignment():
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no partitions of topic {topic} were assigned")
        await asyncio.sleep(ASSIGN_POLL_S)
    return sorted(consumer.assignment())


async def iter_recommendations(
    settings: Settings,
    user: str | None = None,
    from_beginning: bool = False,
    timeout_s: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> AsyncIterator[PublishedList]:
    """Yield lists published to ``settings.recommendations_topic``, oldest first per partition.

    `user`: only lists whose key, ``user_id`` or ``session_id`` equals it. `from_beginning`: start at the
    beginning of every partition instead of its end. `timeout_s`: stop after this many seconds without a
    (matching) list; None waits for ever. `on_ready` is called once the starting offsets are fixed, so a
    caller can produce knowing nothing published afterwards will be missed.

    >>> async for published in iter_recommendations(Settings.load(), user="u-42"):  # doctest: +SKIP
    ...     print(published.visitor, [i["item_id"] for i in published.items])
    """
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_kwargs(),
        client_id=CLIENT_ID,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()
        tps = await assign_all_partitions(consumer, settings.recommendations_topic, timeout_s)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        for tp in tps:  # fix the offsets now, not lazily at the first fetch
            await consumer.position(tp)
        if on_ready is not None:
            on_ready()
        last = time.monotonic()
        while timeout_s is None or time.monotonic() - last < timeout_s:
            batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS_PER_POLL)
            for messages in batches.values():
                for msg in messages:
                    published = _parse(msg)
                    if _matches(published, user):
                        last = time.monotonic()
                        yield published
    finally:
        await consumer.stop()


def format_list(published: PublishedList) -> str:
    """The human form: a header line, then one line per item."""
    doc = published.doc or {}
    latency = doc.get("latency_ms")
    visitor = published.visitor
    if doc.get("user_id") and doc.get("session_id"):
        visitor += f" (session {doc['session_id']})"
    header = "  ".join([
        visitor,
        f"trigger={doc.get('trigger_event_id') or '-'}",
        f"latency={latency:.1f}ms" if isinstance(latency, int | float) else "latency=-",
        f"model={doc.get('model_version', '-')}",
        f"items={len(published.items)}",
    ])
    lines = [header]
    for rank, item in enumerate(published.items, start=1):
        score = item.get("score")
        score_text = f"{score:.3f}" if isinstance(score, int | float) else "?"
        lines.append(f"  {rank:>3}. {item.get('item_id', '?'):<24} {score_text:>8}  {item.get('reason', '')}")
    return "\n".join(lines)


async def _tail(settings: Settings, user: str | None, from_beginning: bool, max_lists: int | None,
                timeout_s: float | None, as_json: bool) -> int:
    shown = 0
    async for published in iter_recommendations(settings, user, from_beginning, timeout_s):
        if published.error is not None:
            click.echo(f"tail: partition {published.partition} offset {published.offset}: not a valid "
                       f"recommendation ({published.error}); skipped", err=True)
            continue
        if as_json:
            click.echo(published.raw.decode("utf-8", "replace"))
        else:
            click.echo(format_list(published))
        sys.stdout.flush()
        shown += 1
        if max_lists is not None and shown >= max_lists:
            break
    return shown


@click.command("tail")
@click.option("--user", help="Only lists of this visitor (user_id or session_id).")
@click.option("--from-beginning", is_flag=True, help="Start at the beginning of the topic, not at its end.")
@click.option("--max", "max_lists", type=click.IntRange(min=1), help="Stop after N lists.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              help="Stop after S seconds without a new list.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON values, one per line.")
@click.pass_obj
def tail_cmd(state: Any, user: str | None, from_beginning: bool, max_lists: int | None, timeout_s: float | None,
             as_json: bool) -> None:
    """Print recommendation lists as they are published."""
    from aiokafka.errors import KafkaConnectionError

    from stream_reco.exit_codes import EXIT_BROKER_NOT_READY, EXIT_FAILURE

    settings: Settings = state.settings
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_tail(settings, user, from_beginning, max_lists, timeout_s, as_json))
    except KafkaConnectionError as exc:
        click.echo(f"tail: cannot reach the broker at {settings.bootstrap} ({exc}); "
                   "start one with `stream-reco broker start`", err=True)
        sys.exit(EXIT_BROKER_NOT_READY)
    except TimeoutError as exc:
        click.echo(f"tail: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
