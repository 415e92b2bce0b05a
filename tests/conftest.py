"""Shared fixtures. Integration tests talk to a real Apache Kafka broker.

The broker is the project's own local one (`stream-reco broker start`); `.ci/run` starts it before pytest,
and the `kafka_settings` fixture starts it too when it is not running, so `pytest` alone works on a
developer's machine. Every test gets fresh topic names and consumer groups (`unique_settings`), so tests
never see each other's messages and can share one broker.
"""

from __future__ import annotations

import uuid

import pytest

from stream_reco.settings import Settings


@pytest.fixture(scope="session")
def kafka_settings() -> Settings:
    from stream_reco import broker

    settings = Settings.load()
    broker.ensure_running(settings)
    return settings


@pytest.fixture
def unique_settings(kafka_settings: Settings) -> Settings:
    """Settings whose topics and app id are unique to this test."""
    tag = uuid.uuid4().hex[:10]
    return kafka_settings.replace(
        events_topic=f"t-{tag}.events",
        catalog_topic=f"t-{tag}.catalog",
        recommendations_topic=f"t-{tag}.recommendations",
        dead_letter_topic=f"t-{tag}.dead-letter",
        app_id=f"t-{tag}",
        partitions=3,
    )
