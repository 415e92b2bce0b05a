"""docker-compose.yml cannot run here (no Docker engine), so check its structure against the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stream_reco.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_ENV = [
    "STREAM_RECO_BOOTSTRAP",
    "STREAM_RECO_EVENTS_TOPIC",
    "STREAM_RECO_CATALOG_TOPIC",
    "STREAM_RECO_RECOMMENDATIONS_TOPIC",
    "STREAM_RECO_DEAD_LETTER_TOPIC",
    "STREAM_RECO_APP_ID",
    "STREAM_RECO_DATA_DIR",
    "STREAM_RECO_MODEL",
    "STREAM_RECO_LIST_SIZE",
]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present(compose: dict) -> None:
    assert {"kafka", "worker", "replay"} <= set(compose["services"])


def test_kafka_is_official_image_in_kraft_mode(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert tag == Settings().kafka_version, "compose and the local broker should run the same Kafka"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert "127.0.0.1:9092:9092" in kafka["ports"], "host clients use the default bootstrap 127.0.0.1:9092"
    assert "EXTERNAL://127.0.0.1:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize("service", ["worker", "replay"])
def test_stream_reco_services_use_contract_setting_names(compose: dict, service: str) -> None:
    env = compose["services"][service]["environment"]
    known = {env_name for _, env_name, _, _ in Settings.field_docs()}
    names = {k for k in env if k.startswith(ENV_PREFIX)}
    assert set(CONTRACT_ENV) <= names
    assert names <= known, f"unknown settings in compose: {names - known}"
    # the in-network bootstrap must point at the broker's internal listener
    host, port = env["STREAM_RECO_BOOTSTRAP"].split(":")
    assert host == "kafka"
    assert f"://:{port}" in compose["services"]["kafka"]["environment"]["KAFKA_LISTENERS"]
    # every value must be accepted by the settings loader
    Settings.load(env={k: str(v) for k, v in env.items()})


def test_worker_exposes_web_port(compose: dict) -> None:
    worker = compose["services"]["worker"]
    port = worker["environment"]["STREAM_RECO_WEB_PORT"]
    assert any(p.endswith(f":{port}") for p in worker["ports"])
    assert worker["environment"]["STREAM_RECO_WEB_HOST"] == "0.0.0.0"
