"""Security: SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) to Kafka through the settings, secrets kept out of logs,
and the message size limit.

A private broker (own ports, tmp data dir) with an extra SASL_PLAINTEXT listener (`broker_sasl_port`; its one
user is `sasl_username` / `sasl_password`, PLAIN through JAAS and SCRAM added when the data dir is formatted)
is started once for the module and stopped whatever happens. Every client of a test talks to the SASL port only:
topic creation (admin), the shop's producer client (`EventProducer`), the worker (faust) and the test's readers.

The password is a fresh random string, so "absent from the output" means absent: the worker runs at DEBUG (the
most verbose logs), and its whole output, the producer's log records and `stream-reco config` are searched.
TLS uses the same settings path (`ssl_cafile`, `ssl_certfile`, `ssl_keyfile`, `ssl_password`, `SSL` /
`SASL_SSL`); the local broker has no TLS listener, so only the client side is checked here
(docs/operations.md says how to run against a TLS cluster).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream_reco import broker, redact
from stream_reco.cli import cli
from stream_reco.settings import Settings
from stream_reco.shop.client import EventProducer
from stream_reco.stream.app import faust_credentials
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, free_ports, produce

SASL_USER = "reco-sasl"
#: small, so an oversized message is cheap; the broker accepts far more, so the worker sees and rejects it
MAX_MESSAGE_BYTES = 10_000
LIST_TIMEOUT_S = 60.0
T0 = 1_764_150_000_000
ITEMS = [{"item_id": f"sec-{i}", "title": f"Lamp {i}", "category": ["Home", "Lighting", "Lamps"], "price": 30.0 + i,
          "in_stock": True, "updated_at": T0} for i in range(10)]


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private broker with a SASL listener; settings whose clients use that listener (mechanism PLAIN)."""
    data_dir = tmp_path_factory.mktemp("sasl-broker")
    port, controller_port, sasl_port = free_ports(3)
    password = f"pw-{uuid.uuid4().hex}"
    settings = Settings.load(env={}).replace(
        data_dir=str(data_dir), broker_port=port, controller_port=controller_port, broker_sasl_port=sasl_port,
        bootstrap=f"127.0.0.1:{sasl_port}", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
        sasl_username=SASL_USER, sasl_password=password, partitions=2, web_port=0,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    broker.start(settings)  # readiness is probed through the SASL port: the login works
    try:
        yield settings
    finally:
        broker.stop(settings)


def _fresh(settings: Settings, mechanism: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return settings.replace(
        sasl_mechanism=mechanism, events_topic=f"t-{tag}.events", catalog_topic=f"t-{tag}.catalog",
        recommendations_topic=f"t-{tag}.recommendations", dead_letter_topic=f"t-{tag}.dead-letter",
        app_id=f"t-{tag}",
    )


async def _send_with_client(settings: Settings, events: list[dict[str, object]]) -> None:
    """The shop's producer client, over SASL: catalog items, then events."""
    async with EventProducer(settings) as producer:
        for item in ITEMS:
            await producer.send_item(item)
        await producer.flush()
        for event in events:
            await producer.send_event(event)
        await producer.flush()


def check_worker_over_sasl(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    password = settings.sasl_password
    ensure_topics(settings)  # the admin client over SASL
    # what any process that logs Kafka clients at DEBUG must do (the worker does it itself; docs/operations.md)
    redact.install(settings)
    worker = None
    try:
        with caplog.at_level(logging.DEBUG):
            asyncio.run(_send_with_client(settings, []))  # the catalog first: the worker reads it at start
            worker = WorkerProcess(settings, name=f"sasl-{settings.sasl_mechanism}", loglevel="debug")
            worker.wait_ready()
            events = [{"event_id": f"sec-e{i}", "event_type": "view", "item_id": f"sec-{i}", "timestamp": T0 + i,
                       "user_id": "u-sasl"} for i in range(3)]
            asyncio.run(_send_with_client(settings, events))
            oversized = orjson.dumps({**events[0], "event_id": "sec-big", "x_pad": "p" * MAX_MESSAGE_BYTES})
            asyncio.run(produce(settings, settings.events_topic, [(b"u-sasl", oversized)]))
        lists = TopicReader(settings, settings.recommendations_topic)
        lists.wait_for(lambda _: any(d["trigger_event_id"] == "sec-e2" for d in lists.lists_for("u-sasl")),
                       timeout=LIST_TIMEOUT_S)
        dead = TopicReader(settings, settings.dead_letter_topic)
        dead.wait_for(lambda r: len(r) >= 1, timeout=LIST_TIMEOUT_S)
    finally:
        if worker is not None:
            worker.stop()
    assert worker is not None and not worker.crashed(), worker.output() if worker else ""
    assert lists.lists_for("u-sasl")[-1]["trigger_event_id"] == "sec-e2", "the worker processed events over SASL"
    record = orjson.loads(dead.records[0][1])
    assert f"larger than the limit of {MAX_MESSAGE_BYTES} bytes" in record["error"], record["error"]
    assert record["raw_size"] == len(oversized)

    output = "\n".join(worker.lines)
    assert len(worker.lines) > 100, "the worker logged at DEBUG (otherwise the check below proves little)"
    assert password not in output, "the SASL password appeared in the worker's output"
    assert not [r for r in caplog.records if password in r.getMessage()], "the password appeared in client logs"


def test_worker_and_producer_client_over_sasl_scram(sasl_broker: Settings, caplog: pytest.LogCaptureFixture) -> None:
    check_worker_over_sasl(_fresh(sasl_broker, "SCRAM-SHA-512"), caplog)


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_worker_and_producer_client_over_sasl_other_mechanisms(
    sasl_broker: Settings, caplog: pytest.LogCaptureFixture, mechanism: str
) -> None:
    check_worker_over_sasl(_fresh(sasl_broker, mechanism), caplog)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_producer_and_reader_over_each_mechanism(sasl_broker: Settings, mechanism: str) -> None:
    """Every mechanism the settings allow logs in: admin, producer client and a reader round trip."""
    settings = _fresh(sasl_broker, mechanism)
    ensure_topics(settings)
    asyncio.run(_send_with_client(settings, []))
    reader = TopicReader(settings, settings.catalog_topic)
    reader.wait_for(lambda r: len(r) >= len(ITEMS), timeout=LIST_TIMEOUT_S)
    assert len(reader.records) == len(ITEMS)


def test_wrong_password_is_refused_without_echoing_it(sasl_broker: Settings) -> None:
    wrong = sasl_broker.replace(sasl_password=f"wrong-{uuid.uuid4().hex}", sasl_mechanism="SCRAM-SHA-512")
    assert not broker.is_ready(wrong, timeout_s=5.0), "a wrong SCRAM password must not log in"
    assert broker.is_ready(sasl_broker, timeout_s=5.0)


def test_config_and_repr_mask_secrets(sasl_broker: Settings) -> None:
    password = sasl_broker.sasl_password
    assert password not in repr(sasl_broker)
    assert password not in str(sasl_broker.masked())
    env = {**sasl_broker.to_env(), "STREAM_RECO_CONFIG": ""}
    result = CliRunner().invoke(cli, ["config"], env=env)
    assert result.exit_code == 0, result.output
    assert SASL_USER in result.output and password not in result.output
    creds = faust_credentials(sasl_broker)
    assert password not in repr(creds)


def test_tls_settings_build_a_verifying_context() -> None:
    """SSL / SASL_SSL: the CA file is loaded and the broker's certificate and host name are verified."""
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if not ca.is_file():
        pytest.skip("no system CA bundle to load")
    settings = Settings.load(env={}).replace(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                             sasl_username="u", sasl_password="p", ssl_cafile=str(ca))
    kwargs = settings.kafka_client_kwargs()
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    creds = faust_credentials(settings)
    assert isinstance(creds.ssl_context, ssl.SSLContext) and creds.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"


def test_log_records_are_redacted_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka logs a SASL PLAIN login request at DEBUG with the password inside a bytes repr."""
    secret = f"pw-ä-{uuid.uuid4().hex}"
    redact.install(Settings.load(env={}).replace(sasl_password=secret))
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        logging.getLogger("aiokafka.conn").debug("Request 3: SaslAuthenticateRequest_v1(auth_bytes=%r)",
                                                 b"\x00user\x00" + secret.encode())
        logging.getLogger("aiokafka.conn").debug("password is %s", secret)
        logging.getLogger("aiokafka.conn").debug("nothing secret: %s", "abc")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(secret not in m for m in messages)
    assert repr(secret.encode())[2:-1] not in messages[0] and redact.MASK in messages[0]
    assert messages[2] == "nothing secret: abc"
