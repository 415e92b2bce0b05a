"""The local Apache Kafka broker: its configuration, its error messages, and one full lifecycle.

The lifecycle test runs its OWN broker (free ports, a tmp data dir), never the shared one on 9092 that other
integration tests use, and stops it even when an assertion fails. One broker start covers every check
(start, status, idempotent start, plaintext and SASL round trips, stop), because a start costs ~5-10 s of the
two shared cores; one restart on the kept data checks that a restart, too, is ready within 30 s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner, Result

from stream_reco import broker
from stream_reco.cli import cli
from stream_reco.exit_codes import EXIT_BROKER_NOT_READY, EXIT_OK, EXIT_USAGE
from stream_reco.settings import Settings

SASL_USER = "reco-test"
SASL_PASSWORD = "not-a-real-secret"
ROUND_TRIP_TIMEOUT_S = 30.0
# issue 2: "ready in under 30 s". broker.READY_TIMEOUT_S is only how long a start may wait before giving up
# (generous for loaded machines); this is the promise a start is held to.
READY_WITHIN_S = 30.0


# Below Linux's ephemeral range (32768+), so no outgoing client connection can grab a port between the moment
# we find it free and the moment the broker binds it; the start varies per process for concurrent runs.
TEST_PORT_BASE = 19192
TEST_PORT_SPAN = 4000


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that nothing uses right now, outside the ephemeral range."""
    ports: list[int] = []
    offset = os.getpid() % TEST_PORT_SPAN
    for i in range(TEST_PORT_SPAN):
        port = TEST_PORT_BASE + (offset + i) % TEST_PORT_SPAN
        if broker._port_free(port) and not broker._port_open(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports in {TEST_PORT_BASE}..{TEST_PORT_BASE + TEST_PORT_SPAN}")


def _settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings.load(env={}, data_dir=str(data_dir), **overrides)


def _invoke(settings: Settings, *args: str) -> Result:
    """`stream-reco broker ARGS` in-process, configured only through STREAM_RECO_* variables."""
    env = {**settings.to_env(), "STREAM_RECO_CONFIG": None}
    return CliRunner().invoke(cli, ["broker", *args], env=env)  # type: ignore[arg-type]


# --- configuration and error messages (no broker) --------------------------------------------------------------


def test_server_properties_single_local_node(tmp_path: Path) -> None:
    settings = _settings(tmp_path, broker_port=19192, controller_port=19193, partitions=5)
    props = broker.server_properties(settings)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19192,CONTROLLER://127.0.0.1:19193"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19192"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19193"
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"  # faust's co-partitioning needs explicit topics
    assert props["num.partitions"] == "5"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert not any("sasl" in key for key in props)
    text = broker.render_properties(props)
    assert "listeners=PLAINTEXT://127.0.0.1:19192,CONTROLLER://127.0.0.1:19193\n" in text
    assert "0.0.0.0" not in text


def test_server_properties_sasl_listener(tmp_path: Path) -> None:
    settings = _settings(tmp_path, broker_sasl_port=19194, sasl_username=SASL_USER, sasl_password=SASL_PASSWORD)
    props = broker.server_properties(settings)
    assert props["listeners"].endswith(",SASL_PLAINTEXT://127.0.0.1:19194")
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    assert f'user_{SASL_USER}="{SASL_PASSWORD}"' in props["listener.name.sasl_plaintext.plain.sasl.jaas.config"]


def test_render_properties_escapes_backslashes() -> None:
    assert broker.render_properties({"a": "C:\\x\ny"}).endswith("a=C:\\\\x\\ny\n")


def test_java_missing_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    settings = _settings(tmp_path, broker_port=_free_ports(1)[0])
    with pytest.raises(broker.BrokerSetupError, match="Java 17"):
        broker.start(settings)
    result = _invoke(settings, "start")
    assert result.exit_code == EXIT_USAGE
    assert "no `java` was found" in result.output
    assert "apt-get install openjdk-17" in result.output


def test_java_too_old_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "jdk11" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("JAVA_HOME", str(fake.parent.parent))
    with pytest.raises(broker.BrokerSetupError, match="is Java 11"):
        broker.fetch(_settings(tmp_path))


def test_maven_missing_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None if name == "mvn" else real_which(name))
    result = _invoke(_settings(tmp_path), "fetch")
    assert result.exit_code == EXIT_USAGE
    assert "Maven (`mvn`)" in result.output and "apt-get install maven" in result.output


def test_clashing_ports_are_a_configuration_error(tmp_path: Path) -> None:
    result = _invoke(_settings(tmp_path, broker_port=19192, controller_port=19192), "start")
    assert result.exit_code == EXIT_USAGE
    assert "ports must differ" in result.output


def test_cluster_id_has_kafkas_shape() -> None:
    ids = {broker._new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_terminate_falls_back_to_sigkill(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that ignores SIGTERM is killed after the grace period, and reaped."""
    monkeypatch.setattr(broker, "STOP_TIMEOUT_S", 0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    broker._terminate(proc.pid)  # reaps it too (psutil waits on its children), so Popen learns no status
    assert not psutil.pid_exists(proc.pid)
    proc.stdout.close()
    proc.wait(timeout=5)


def test_run_sync_works_inside_a_running_event_loop() -> None:
    async def inside() -> int:
        return broker._run_sync(lambda: asyncio.sleep(0, result=7))

    assert asyncio.run(inside()) == 7


# --- one real broker, start to stop --------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Settings]:
    """Settings of a private broker (free ports, tmp data dir, SASL listener on); stopped whatever happens."""
    port, controller_port, sasl_port = _free_ports(3)
    settings = _settings(tmp_path, broker_port=port, controller_port=controller_port, broker_sasl_port=sasl_port,
                         bootstrap=f"127.0.0.1:{port}", sasl_username=SASL_USER, sasl_password=SASL_PASSWORD)
    try:
        yield settings
    finally:
        broker.stop(settings)


async def _round_trip(settings: Settings) -> list[bytes]:
    """Create a topic, produce once over PLAINTEXT and once per SASL mechanism, consume all back."""
    plain = {"bootstrap_servers": f"127.0.0.1:{settings.broker_port}"}
    topic = f"t-{uuid.uuid4().hex[:10]}.broker"
    admin = AIOKafkaAdminClient(**plain)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producers = [("PLAINTEXT", plain)] + [
        (mechanism, {"bootstrap_servers": f"127.0.0.1:{settings.broker_sasl_port}",
                     "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                     "sasl_plain_username": SASL_USER, "sasl_plain_password": SASL_PASSWORD})
        for mechanism in broker.SASL_MECHANISMS]
    for name, kwargs in producers:
        producer = AIOKafkaProducer(**kwargs)
        await producer.start()
        try:
            await producer.send_and_wait(topic, name.encode(), key=b"k")
        finally:
            await producer.stop()
    consumer = AIOKafkaConsumer(topic, **plain, group_id=f"g-{topic}", auto_offset_reset="earliest")
    await consumer.start()
    try:
        received: list[bytes] = []
        async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
            while len(received) < len(producers):
                batch = await consumer.getmany(timeout_ms=1000)
                received += [record.value for records in batch.values() for record in records]  # type: ignore[misc]
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


def _our_processes(settings: Settings) -> list[psutil.Process]:
    target = str(broker.BrokerPaths.for_settings(settings).server_properties)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if target in (proc.info.get("cmdline") or []):
            found.append(proc)
    return found


@pytest.mark.integration
def test_broker_lifecycle(own_broker: Settings) -> None:
    settings = own_broker
    ports = (settings.broker_port, settings.controller_port, settings.broker_sasl_port)
    broker.fetch(settings)  # resolving the jars (Maven) is a one-off download step, not part of being ready

    began = time.monotonic()
    result = _invoke(settings, "start")
    first_start_s = time.monotonic() - began
    assert result.exit_code == EXIT_OK, result.output
    assert "ready on" in result.output
    assert first_start_s < READY_WITHIN_S, f"first start took {first_start_s:.1f} s"

    result = _invoke(settings, "status")
    assert result.exit_code == EXIT_OK, result.output
    info = broker.status(settings)
    assert info.ready and info.pid is not None and info.version == settings.kafka_version
    assert f"pid:        {info.pid}" in result.output

    # starting again (CLI and API) finds the same process
    result = _invoke(settings, "start")
    assert result.exit_code == EXIT_OK and f"already running on 127.0.0.1:{settings.broker_port} (pid {info.pid})" \
        in result.output
    assert broker.start(settings) == info.pid
    broker.ensure_running(settings)
    assert [p.pid for p in _our_processes(settings)] == [info.pid]
    with pytest.raises(broker.BrokerError, match="runs with other settings"):
        broker.start(settings.replace(broker_port=_free_ports(1)[0]))

    assert sorted(asyncio.run(_round_trip(settings))) == sorted(
        [b"PLAINTEXT", *(m.encode() for m in broker.SASL_MECHANISMS)])

    result = _invoke(settings, "stop")
    assert result.exit_code == EXIT_OK and "stopped" in result.output
    assert _our_processes(settings) == []
    assert not any(broker._port_open(port) for port in ports)
    assert not broker.BrokerPaths.for_settings(settings).pid_file.exists()
    result = _invoke(settings, "status")
    assert result.exit_code == EXIT_BROKER_NOT_READY, result.output
    assert not broker.is_ready(settings, timeout_s=1.0)

    # a restart on the kept data dir (no format, but log recovery) is held to the same promise
    began = time.monotonic()
    pid = broker.start(settings)
    restart_s = time.monotonic() - began
    assert restart_s < READY_WITHIN_S, f"restart took {restart_s:.1f} s"
    assert pid != info.pid and broker.status(settings).ready
    broker.stop(settings)
    assert _our_processes(settings) == []
