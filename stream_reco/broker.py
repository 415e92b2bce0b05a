"""A local single-node Apache Kafka broker (KRaft, combined broker + controller) on 127.0.0.1.

Why real Kafka: the Kafka-compatible brokers installable from PyPI or Debian get end offsets wrong, which
makes faust's table recovery silently lose state (docs/stack-findings.md). So we run the genuine broker from
its Maven Central jars: Maven resolves ``org.apache.kafka:kafka_2.13:<settings.kafka_version>`` once into a
cached classpath, ``kafka.tools.StorageTool format`` prepares the KRaft log directory once, and
``kafka.Kafka server.properties`` runs detached from the command that started it (own session), so it
outlives ``stream-reco broker start`` and serves every test run and worker until ``stop``.

Everything lives under ``settings.data_path / "kafka"`` (see `BrokerPaths`). Several instances can run side by
side as long as each has its own data dir and ports, which is how the integration tests stay away from the
shared broker on 9092.

Python API (used by the test fixtures and other commands): `ensure_running`, `is_ready`, `start`, `stop`,
`fetch`, `status` and `BrokerError` (`BrokerSetupError` for a missing tool or an unusable setting).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import psutil

from stream_reco.cli import CliState
from stream_reco.exit_codes import EXIT_BROKER_NOT_READY, EXIT_FAILURE, EXIT_USAGE
from stream_reco.settings import Settings

__all__ = [
    "BrokerError",
    "BrokerPaths",
    "BrokerSetupError",
    "BrokerStatus",
    "broker_cli",
    "ensure_running",
    "fetch",
    "is_ready",
    "local_client_kwargs",
    "server_properties",
    "start",
    "status",
    "stop",
]

log = logging.getLogger(__name__)

# --- where and how -------------------------------------------------------------------------------------------
LOCAL_HOST = "127.0.0.1"  # the local broker never listens beyond this machine
LOCAL_HOST_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
NODE_ID = 1  # the one node of the single-node KRaft quorum
KAFKA_MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
KAFKA_ARTIFACT = "kafka_2.13"  # Scala 2.13 build: the only one published for Kafka 4.x
# log4j-slf4j-impl must match the log4j-core that kafka_2.13 pulls in (2.24.3 for Kafka 4.1.x).
LOG4J_VERSION = "2.24.3"
# Maven 3.8's own default for this plugin; pinned so another Maven resolves identically and offline.
DEPENDENCY_PLUGIN_VERSION = "2.8"
MIN_JAVA_MAJOR = 17  # Kafka 4.x brokers need Java 17+
POM_RESOURCE = "resources/kafka-pom.xml"
LOG4J_RESOURCE = "resources/kafka-log4j2.properties"

# --- JVM -------------------------------------------------------------------------------------------------------
# The GC flags Kafka's own bin/kafka-run-class.sh uses: short pauses keep produce latency flat.
BROKER_JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
TOOL_HEAP = "256m"  # StorageTool only writes a few small files

# --- timing ------------------------------------------------------------------------------------------------------
READY_TIMEOUT_S = 60.0  # measured ~5-8 s on 2 cores; generous because other work shares those cores
READY_POLL_S = 0.25
READY_PROBE_TIMEOUT_S = 3.0  # one metadata request during startup polling
STATUS_TIMEOUT_S = 5.0  # `status` and is_ready(): a healthy local broker answers in milliseconds
STOP_TIMEOUT_S = 30.0  # a clean shutdown flushes and closes every partition; usually a few seconds
KILL_TIMEOUT_S = 10.0
STOP_POLL_S = 0.1
MAVEN_TIMEOUT_S = 900.0  # a first resolve downloads ~46 jars (~40 MB) from Maven Central
FORMAT_TIMEOUT_S = 120.0
JAVA_VERSION_TIMEOUT_S = 30.0
PORT_CONNECT_TIMEOUT_S = 0.5
LOG_TAIL_LINES = 40

# --- broker configuration for development (see server_properties) ----------------------------------------------
MIB = 1024 * 1024
SEGMENT_BYTES = 64 * MIB  # small segments so size retention and compaction act on a dev machine's scale
RETENTION_BYTES_PER_PARTITION = 512 * MIB
RETENTION_MS_UNLIMITED = -1  # see server_properties: replayed logs carry old record timestamps
RETENTION_CHECK_INTERVAL_MS = 60_000
# 50 partitions each (Kafka's default) make the first consumer group and first transaction slow to appear on
# a 2-core machine; 10 is plenty for one developer's groups.
INTERNAL_TOPIC_PARTITIONS = 10
NETWORK_THREADS = 2  # Kafka's defaults (3 network, 8 I/O) assume a server, not 2 shared cores
IO_THREADS = 4
CLEANER_DEDUPE_BUFFER_BYTES = 16 * MIB  # default 128 MiB would be a quarter of the 512m heap
# The broker must accept messages above settings.max_message_bytes, so that the worker sees them and can
# dead-letter them (with a base64 copy, ~4/3 their size) instead of the producer failing.
MESSAGE_MAX_BYTES_FLOOR = 8 * MIB
OVERSIZE_HEADROOM = 4
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# Characters that would break the JAAS user_<name> key or StorageTool's --add-scram 'name=...' syntax.
SASL_USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]+$")
SCRAM_PASSWORD_FORBIDDEN = frozenset(',[]="\\\n\r')
HEAP_PATTERN = re.compile(r"^\d+[kKmMgG]?$")
MAX_PORT = 65535


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started, stopped or reached; the message says why and what next."""


class BrokerSetupError(BrokerError):
    """A tool is missing (Java, Maven) or a setting is unusable: a configuration problem (CLI exit status 2)."""


T = TypeVar("T")


@dataclass(frozen=True)
class BrokerPaths:
    """Every file of one local broker instance, all under ``<data dir>/kafka``."""

    root: Path

    @classmethod
    def for_settings(cls, settings: Settings) -> BrokerPaths:
        return cls(settings.data_path / "kafka")

    @property
    def pom(self) -> Path:
        return self.root / "pom.xml"

    @property
    def classpath_file(self) -> Path:
        return self.root / "classpath.txt"

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def data_dir(self) -> Path:
        """Kafka's log.dirs: topic partitions and the KRaft metadata log."""
        return self.root / "data"

    @property
    def meta_properties(self) -> Path:
        """Written by StorageTool format; its presence means the data dir is formatted."""
        return self.data_dir / "meta.properties"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "broker.out"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def state_file(self) -> Path:
        """What the running process was started with (version, ports), for `status`."""
        return self.root / "broker.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "broker.lock"

    @property
    def scram_marker(self) -> Path:
        """Fingerprint of the SCRAM user added at format time (SCRAM users cannot be re-added by format)."""
        return self.root / "scram-user.sha256"


@dataclass(frozen=True)
class BrokerStatus:
    """What `stream-reco broker status` reports."""

    ready: bool
    pid: int | None
    version: str
    port: int
    controller_port: int
    sasl_port: int
    data_dir: Path
    cluster_id: str | None
    brokers: int


# --- tools ---------------------------------------------------------------------------------------------------------

_JAVA_HINT = (
    "Install a Java 17+ runtime (Debian/Ubuntu: `sudo apt-get install openjdk-17-jre-headless`; "
    "macOS: `brew install openjdk@17`) or point JAVA_HOME at one."
)
_MAVEN_HINT = "Install Apache Maven (Debian/Ubuntu: `sudo apt-get install maven`; macOS: `brew install maven`)."


def find_java() -> Path:
    """The `java` to run Kafka with: $JAVA_HOME/bin/java if set, else the one on PATH; must be Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is None or not os.access(candidate, os.X_OK):
        found = shutil.which("java")
        if found is None:
            raise BrokerSetupError(f"Java {MIN_JAVA_MAJOR}+ is needed to run the local Kafka broker, but no `java` "
                                   f"was found (JAVA_HOME unset or invalid, none on PATH). {_JAVA_HINT}")
        candidate = Path(found)
    major = _java_major_version(str(candidate))
    if major < MIN_JAVA_MAJOR:
        raise BrokerSetupError(f"Kafka needs Java {MIN_JAVA_MAJOR}+, but {candidate} is Java {major}. {_JAVA_HINT}")
    return candidate


@functools.lru_cache(maxsize=8)
def _java_major_version(java: str) -> int:
    """Parse `java -version` ('openjdk version "17.0.15"', or '"1.8.0_292"' for Java 8)."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=JAVA_VERSION_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerSetupError(f"could not run `{java} -version`: {exc}. {_JAVA_HINT}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise BrokerSetupError(f"could not read the Java version from `{java} -version`. {_JAVA_HINT}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" is Java 8
        major = int(match.group(2))
    return major


def find_maven() -> Path:
    """`mvn` on PATH: it resolves Kafka's jars (and their dependencies) from Maven Central."""
    found = shutil.which("mvn")
    if found is None:
        raise BrokerSetupError(f"Maven (`mvn`) is needed to download the Kafka broker's jars but is not on PATH. "
                               f"{_MAVEN_HINT}")
    return Path(found)


# --- fetch -------------------------------------------------------------------------------------------------------


def _resource_text(name: str) -> str:
    return importlib.resources.files("stream_reco").joinpath(name).read_text(encoding="utf-8")


def render_pom(kafka_version: str) -> str:
    """The pom that pins the broker's jars; its text doubles as the classpath cache key."""
    return string.Template(_resource_text(POM_RESOURCE)).substitute(
        kafka_version=kafka_version, log4j_version=LOG4J_VERSION, dependency_plugin_version=DEPENDENCY_PLUGIN_VERSION)


def _read_classpath(path: Path) -> list[Path]:
    text = path.read_text(encoding="utf-8").strip()
    return [Path(p) for p in text.split(os.pathsep) if p]


def _cached_classpath(paths: BrokerPaths, pom: str) -> list[Path] | None:
    """The cached classpath if it was resolved from this very pom and every jar is still in ~/.m2."""
    try:
        if paths.pom.read_text(encoding="utf-8") != pom:
            return None
        jars = _read_classpath(paths.classpath_file)
    except FileNotFoundError:
        return None
    return jars if jars and all(j.is_file() for j in jars) else None


def fetch(settings: Settings, *, refresh: bool = False) -> list[Path]:
    """Resolve Kafka ``settings.kafka_version``'s server jars through Maven; return the classpath.

    The classpath is cached in the data dir, so only the first call (or ``refresh``) runs Maven; the jars
    themselves stay in Maven's local repository (~/.m2), shared by every data dir.
    """
    paths = BrokerPaths.for_settings(settings)
    paths.root.mkdir(parents=True, exist_ok=True)
    with _locked(paths):
        return _fetch_locked(settings, paths, refresh=refresh)


def _fetch_locked(settings: Settings, paths: BrokerPaths, *, refresh: bool = False) -> list[Path]:
    pom = render_pom(settings.kafka_version)
    if not refresh and (jars := _cached_classpath(paths, pom)) is not None:
        return jars
    find_java()  # Maven runs on Java too, and the broker will need 17+: fail early with the clear message
    mvn = find_maven()
    paths.pom.write_text(pom, encoding="utf-8")
    out_file = paths.classpath_file.with_suffix(".tmp")
    cmd = [str(mvn), "-q", "-B", "-Dstyle.color=never", "-f", str(paths.pom), "dependency:build-classpath",
           f"-Dmdep.outputFile={out_file}"]
    log.info("resolving org.apache.kafka:%s:%s with Maven", KAFKA_ARTIFACT, settings.kafka_version)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False,
                              cwd=paths.root)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"Maven did not finish resolving Kafka's jars within {MAVEN_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0 or not out_file.is_file():
        output = _tail_text(proc.stdout + proc.stderr, LOG_TAIL_LINES)
        raise BrokerError(f"Maven could not resolve org.apache.kafka:{KAFKA_ARTIFACT}:{settings.kafka_version} "
                          f"(exit status {proc.returncode}; is the version right and Maven Central reachable?):\n"
                          f"{output}")
    jars = _read_classpath(out_file)
    expected = f"{KAFKA_ARTIFACT}-{settings.kafka_version}.jar"
    if not any(j.name == expected for j in jars):
        raise BrokerError(f"Maven's classpath for Kafka {settings.kafka_version} lacks {expected}: {out_file}")
    os.replace(out_file, paths.classpath_file)
    return jars


# --- configuration ------------------------------------------------------------------------------------------------


def _validate(settings: Settings) -> None:
    """Settings the broker cannot start with: reported as configuration errors (exit 2), before any work."""
    ports = {"broker_port": settings.broker_port, "controller_port": settings.controller_port}
    if settings.broker_sasl_port:
        ports["broker_sasl_port"] = settings.broker_sasl_port
    for name, port in ports.items():
        if not 0 < port <= MAX_PORT:
            raise BrokerSetupError(f"{name} must be within 1..{MAX_PORT}, not {port}")
    if len(set(ports.values())) != len(ports):
        raise BrokerSetupError(f"the local broker's ports must differ: {ports}")
    if not HEAP_PATTERN.match(settings.broker_heap):
        raise BrokerSetupError(f"broker_heap {settings.broker_heap!r} is not a JVM size such as 512m or 1g")
    if settings.broker_sasl_port:
        if not SASL_USERNAME_PATTERN.match(settings.sasl_username):
            raise BrokerSetupError("broker_sasl_port is set, so sasl_username must name the broker's SASL user "
                                   "(letters, digits and . _ @ - only)")
        if not settings.sasl_password or SCRAM_PASSWORD_FORBIDDEN & set(settings.sasl_password):
            raise BrokerSetupError("broker_sasl_port is set, so sasl_password must be non-empty and free of "
                                   "the characters , [ ] = \" \\ and line breaks")


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_properties(settings: Settings, paths: BrokerPaths | None = None) -> dict[str, str]:
    """The broker's server.properties, from settings: a single KRaft node on 127.0.0.1 tuned for development.

    - ``auto.create.topics.enable=false``: a producer that touches a missing topic would create it with one
      partition and break faust's co-partitioning of events and tables; topics are created explicitly.
    - Replication factors and ISR of internal topics are 1: there is only one broker.
    - ``group.initial.rebalance.delay.ms=0``: tests and the demo should not wait 3 s per first group join.
    - ``message.max.bytes`` well above ``max_message_bytes``: oversize messages must reach the dead-letter path.
    - Retention is by size only. Replayed event logs may carry their original (old) record timestamps, and a
      time limit would delete them as soon as they arrive.
    """
    paths = paths or BrokerPaths.for_settings(settings)
    sasl = bool(settings.broker_sasl_port)
    listeners = [f"PLAINTEXT://{LOCAL_HOST}:{settings.broker_port}",
                 f"CONTROLLER://{LOCAL_HOST}:{settings.controller_port}"]
    advertised = [f"PLAINTEXT://{LOCAL_HOST}:{settings.broker_port}"]
    protocol_map = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if sasl:
        listeners.append(f"SASL_PLAINTEXT://{LOCAL_HOST}:{settings.broker_sasl_port}")
        advertised.append(f"SASL_PLAINTEXT://{LOCAL_HOST}:{settings.broker_sasl_port}")
        protocol_map.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{LOCAL_HOST}:{settings.controller_port}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(protocol_map),
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(paths.data_dir),
        "num.partitions": str(settings.partitions),
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": str(INTERNAL_TOPIC_PARTITIONS),
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": str(INTERNAL_TOPIC_PARTITIONS),
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(max(MESSAGE_MAX_BYTES_FLOOR, OVERSIZE_HEADROOM * settings.max_message_bytes)),
        "num.network.threads": str(NETWORK_THREADS),
        "num.io.threads": str(IO_THREADS),
        "log.segment.bytes": str(SEGMENT_BYTES),
        "log.retention.ms": str(RETENTION_MS_UNLIMITED),
        "log.retention.bytes": str(RETENTION_BYTES_PER_PARTITION),
        "log.retention.check.interval.ms": str(RETENTION_CHECK_INTERVAL_MS),
        "log.cleaner.dedupe.buffer.size": str(CLEANER_DEDUPE_BUFFER_BYTES),
    }
    if sasl:
        prefix = "listener.name.sasl_plaintext"
        props["sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
        props[f"{prefix}.sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
        props[f"{prefix}.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f"user_{settings.sasl_username}={_jaas_quote(settings.sasl_password)};")
        for mechanism in SCRAM_MECHANISMS:
            props[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    return props


def render_properties(props: dict[str, str]) -> str:
    """Java .properties text; backslashes and line breaks in values are escaped the way Java reads them back."""

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")

    lines = ["# Written by `stream-reco broker start` from the settings on every start; edits are overwritten."]
    lines += [f"{key}={esc(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: server.properties may hold the SASL password."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _java_command(java: Path, classpath: list[Path], paths: BrokerPaths, heap: str, main_class: str,
                  *args: str, extra_flags: tuple[str, ...] = ()) -> list[str]:
    return [str(java), f"-Xmx{heap}", *extra_flags,
            f"-Dlog4j2.configurationFile={paths.log4j_config}", f"-Dkafka.logs.dir={paths.log_dir}",
            "-cp", os.pathsep.join(map(str, classpath)), main_class, *args]


def _new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding, never starting with '-'.

    Same shape as Kafka's Uuid.randomUuid(); generated here to spare a JVM start (`StorageTool random-uuid`).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _scram_fingerprint(settings: Settings) -> str:
    return hashlib.sha256(f"{settings.sasl_username}\0{settings.sasl_password}".encode()).hexdigest()


def _format_storage(settings: Settings, paths: BrokerPaths, java: Path, classpath: list[Path]) -> None:
    """Prepare the KRaft log dir once (cluster id, node id, and the SCRAM user when SASL is on)."""
    args = ["format", "-t", _new_cluster_id(), "-c", str(paths.server_properties)]
    if settings.broker_sasl_port:
        for mechanism in SCRAM_MECHANISMS:
            args += ["--add-scram", f"{mechanism}=[name={settings.sasl_username},password={settings.sasl_password}]"]
    cmd = _java_command(java, classpath, paths, TOOL_HEAP, STORAGE_TOOL_CLASS, *args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S, check=False,
                              cwd=paths.root)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"formatting the broker's storage took over {FORMAT_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        output = _redact(_tail_text(proc.stdout + proc.stderr, LOG_TAIL_LINES), settings)
        raise BrokerError(f"kafka StorageTool could not format {paths.data_dir} (exit status {proc.returncode}):\n"
                          f"{output}")
    if settings.broker_sasl_port:
        _write_private(paths.scram_marker, _scram_fingerprint(settings) + "\n")


def _check_scram_user(settings: Settings, paths: BrokerPaths) -> None:
    """SCRAM credentials are stored in the cluster metadata at format time; a different user needs a new format."""
    if not settings.broker_sasl_port:
        return
    try:
        recorded = paths.scram_marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        recorded = ""
    if recorded != _scram_fingerprint(settings):
        raise BrokerSetupError(
            f"the broker's data in {paths.data_dir} was formatted without this SCRAM user (sasl_username / "
            f"sasl_password changed, or SASL was off then). SCRAM users are added when the data dir is formatted: "
            f"run `stream-reco broker stop`, delete {paths.root} (its topics are lost), then start again; or use "
            f"another STREAM_RECO_DATA_DIR.")


def _redact(text: str, settings: Settings) -> str:
    return text.replace(settings.sasl_password, "***") if settings.sasl_password else text


# --- process and port helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(paths: BrokerPaths) -> Iterator[None]:
    """One start/stop/fetch at a time per data dir, across processes (e.g. two test runs both starting it)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_our_broker(pid: int, paths: BrokerPaths) -> bool:
    """True if `pid` is a live kafka.Kafka process started with this data dir's server.properties."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return KAFKA_MAIN_CLASS in cmdline and str(paths.server_properties) in cmdline


def _find_broker_pid(paths: BrokerPaths) -> int | None:
    """The pid of this data dir's broker: from the pid file, else by its command line (pid file lost)."""
    try:
        pid = int(paths.pid_file.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        pid = None
    if pid is not None and _is_our_broker(pid, paths):
        return pid
    target = str(paths.server_properties)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if KAFKA_MAIN_CLASS in cmdline and target in cmdline and _is_our_broker(proc.info["pid"], paths):
            return int(proc.info["pid"])
    return None


def _port_open(port: int, host: str = LOCAL_HOST) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=PORT_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """We could bind host:port now (SO_REUSEADDR, like the JVM, so TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _port_owner(port: int) -> str:
    """'pid N (name)' of the process listening on port, when the OS lets us see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except (psutil.AccessDenied, OSError):
        pass
    return "another process"


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _log_sizes(paths: BrokerPaths) -> dict[Path, int]:
    """Current sizes of the broker's logs, so an error can show only what this start wrote."""
    sizes = {}
    for path in (paths.stdout_log, paths.server_log):
        with contextlib.suppress(OSError):
            sizes[path] = path.stat().st_size
    return sizes


def _log_tail(paths: BrokerPaths, settings: Settings, since: dict[Path, int] | None = None) -> str:
    """The last lines of broker.out and server.log (from the `since` offsets on), secrets masked."""
    parts = []
    for path in (paths.stdout_log, paths.server_log):
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            fh.seek((since or {}).get(path, 0))
            tail = _tail_text(fh.read().decode("utf-8", errors="replace"), LOG_TAIL_LINES)
            if tail:
                parts.append(f"--- last lines of {path} ---\n{tail}")
    return _redact("\n".join(parts), settings) if parts else f"(no log output in {paths.log_dir})"


# --- readiness -----------------------------------------------------------------------------------------------------


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


_SECURITY_KWARGS = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
                    "sasl_plain_password")


def local_client_kwargs(settings: Settings) -> dict[str, Any]:
    """settings.kafka_client_kwargs(), pointed at the local broker.

    With SASL_PLAINTEXT and the SASL listener on, the SASL port is used, so readiness also proves the login
    works; otherwise the PLAINTEXT port, without security arguments (the local broker has no TLS listener).
    """
    kwargs = settings.kafka_client_kwargs()
    if settings.security_protocol == "SASL_PLAINTEXT" and settings.broker_sasl_port:
        kwargs["bootstrap_servers"] = f"{LOCAL_HOST}:{settings.broker_sasl_port}"
        return kwargs
    for key in _SECURITY_KWARGS:
        kwargs.pop(key, None)
    kwargs["bootstrap_servers"] = f"{LOCAL_HOST}:{settings.broker_port}"
    return kwargs


async def _probe(client_kwargs: dict[str, Any], timeout_s: float) -> int:
    """Number of live brokers a real metadata request reports (0 if none answers in time).

    A KRaft broker only opens its client listener once it has caught up with the metadata log, and a metadata
    response lists only unfenced brokers, so one listed broker means clients can work now.
    """
    from aiokafka import AIOKafkaClient  # deferred: aiokafka is a heavy import for `broker stop`

    client = AIOKafkaClient(**client_kwargs, request_timeout_ms=max(int(timeout_s * 1000), 1))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return len(client.cluster.brokers())
    except Exception as exc:  # refused, timed out, login failed...: all mean "not ready"
        log.debug("metadata request to %s failed: %r", client_kwargs.get("bootstrap_servers"), exc)
        return 0
    finally:
        await client.close()


def _probe_brokers(client_kwargs: dict[str, Any], timeout_s: float) -> int:
    first = str(client_kwargs["bootstrap_servers"]).split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host in LOCAL_HOST_NAMES and port.isdigit() and not _port_open(int(port), LOCAL_HOST):
        return 0  # nothing listens: skip aiokafka, which would log a connection error for each poll
    return _run_sync(lambda: _probe(client_kwargs, timeout_s))


def is_ready(settings: Settings, timeout_s: float = STATUS_TIMEOUT_S) -> bool:
    """True if the local broker (settings' ports) answers a metadata request within timeout_s."""
    return _probe_brokers(local_client_kwargs(settings), timeout_s) > 0


def _bootstrap_is_local(settings: Settings) -> bool:
    """The configured bootstrap servers are this machine's local broker (so we may start it)."""
    local_ports = {settings.broker_port, settings.broker_sasl_port} - {0}
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        if host.strip("[]") not in LOCAL_HOST_NAMES or not port.isdigit() or int(port) not in local_ports:
            return False
    return bool(settings.bootstrap_servers)


# --- lifecycle -------------------------------------------------------------------------------------------------


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started here: kept so stop() reaps them (no zombies)


def launched_pids() -> frozenset[int]:
    """Broker processes this Python process started and has not stopped yet.

    A caller that must stop only a broker it started itself (the demo, on Ctrl-C during `ensure_running`)
    compares this before and after the call: an interrupted start leaves no other trace.
    """
    return frozenset(_CHILDREN)


def _wait_ready(settings: Settings, paths: BrokerPaths, pid: int, deadline: float,
                since: dict[Path, int] | None = None) -> None:
    """Poll until the broker answers; raise with the log's tail if it dies or the deadline passes."""
    proc = _CHILDREN.get(pid)
    while True:
        # Our own child: ask it directly. Its /proc cmdline, which _is_our_broker reads, is briefly empty
        # while exec() is still loading java.
        exited = proc.poll() if proc is not None else None
        if exited is not None or (proc is None and not _is_our_broker(pid, paths)):
            _forget_pid(paths)
            status_text = f" with status {exited}" if exited is not None else ""
            raise BrokerError(f"the Kafka broker (pid {pid}) exited{status_text} during startup.\n"
                              f"{_log_tail(paths, settings, since)}")
        remaining = deadline - time.monotonic()
        if is_ready(settings, timeout_s=max(min(READY_PROBE_TIMEOUT_S, remaining), READY_POLL_S)):
            return
        if remaining <= 0:
            raise BrokerError(f"the Kafka broker (pid {pid}) did not answer on {LOCAL_HOST}:{settings.broker_port} "
                              f"within {READY_TIMEOUT_S:.0f} s.\n{_log_tail(paths, settings, since)}")
        time.sleep(READY_POLL_S)


def _state_of(settings: Settings) -> dict[str, Any]:
    """The fields of broker.json that must match for a running broker to serve these settings."""
    return {"kafka_version": settings.kafka_version, "broker_port": settings.broker_port,
            "controller_port": settings.controller_port, "broker_sasl_port": settings.broker_sasl_port}


def _check_same_config(settings: Settings, paths: BrokerPaths, pid: int) -> None:
    """A broker from this data dir started with other ports or version would never answer where we look."""
    try:
        recorded = json.loads(paths.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # started by an older stream-reco or the state file was lost: readiness will tell
    wanted = _state_of(settings)
    differing = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
    if differing:
        details = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in differing.items())
        raise BrokerError(f"the broker of {paths.root} (pid {pid}) runs with other settings ({details}); "
                          f"run `stream-reco broker stop` first to restart it with the new ones")


def _forget_pid(paths: BrokerPaths) -> None:
    for path in (paths.pid_file, paths.state_file):
        path.unlink(missing_ok=True)


def _check_ports_free(settings: Settings, paths: BrokerPaths) -> None:
    ports = [("broker_port", settings.broker_port), ("controller_port", settings.controller_port)]
    if settings.broker_sasl_port:
        ports.append(("broker_sasl_port", settings.broker_sasl_port))
    for name, port in ports:
        if _port_free(port):
            continue
        what = _port_owner(port)
        if name == "broker_port" and is_ready(settings):
            what += f", a Kafka broker not started from {paths.root}"
        raise BrokerError(f"port {port} on {LOCAL_HOST} ({name}) is already in use by {what}. Stop it, or give "
                          f"this broker other ports (STREAM_RECO_{name.upper()}) and another STREAM_RECO_DATA_DIR.")


def _start(settings: Settings) -> tuple[int, bool]:
    """Start the broker if needed; (pid, True if this call started it)."""
    _validate(settings)
    paths = BrokerPaths.for_settings(settings)
    with _locked(paths):
        pid = _find_broker_pid(paths)
        if pid is not None:  # already running (or still starting): just make sure it answers
            _check_same_config(settings, paths, pid)
            _wait_ready(settings, paths, pid, time.monotonic() + READY_TIMEOUT_S)
            return pid, False
        _forget_pid(paths)
        java = find_java()
        _check_ports_free(settings, paths)
        classpath = _fetch_locked(settings, paths)
        for path in (paths.data_dir, paths.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        _write_private(paths.server_properties, render_properties(server_properties(settings, paths)))
        paths.log4j_config.write_text(_resource_text(LOG4J_RESOURCE), encoding="utf-8")
        if not paths.meta_properties.exists():
            _format_storage(settings, paths, java, classpath)
        _check_scram_user(settings, paths)
        cmd = _java_command(java, classpath, paths, settings.broker_heap, KAFKA_MAIN_CLASS,
                            str(paths.server_properties), extra_flags=BROKER_JVM_FLAGS)
        since = _log_sizes(paths)
        with open(paths.stdout_log, "ab") as out:
            # own session: survives the CLI exiting and a Ctrl-C in the terminal that started it
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=paths.root, start_new_session=True, close_fds=True)
        _CHILDREN[proc.pid] = proc
        paths.pid_file.write_text(f"{proc.pid}\n", encoding="utf-8")
        paths.state_file.write_text(json.dumps(
            {"pid": proc.pid, **_state_of(settings), "started_at": time.time()}) + "\n", encoding="utf-8")
        try:
            _wait_ready(settings, paths, proc.pid, time.monotonic() + READY_TIMEOUT_S, since)
        except BrokerError:
            _terminate(proc.pid)  # leave nothing half-started behind
            _forget_pid(paths)
            raise
        return proc.pid, True


def start(settings: Settings) -> int:
    """Start the local broker and wait until it answers; return its pid. Harmless when it already runs."""
    return _start(settings)[0]


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until pid has exited; True if it did in time.

    A zombie counts as gone (it holds no ports or files): after the starting CLI exits, the broker's parent is
    whatever reaps orphans, which in some containers never does. Our own children are reaped here.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL_S)


def _terminate(pid: int) -> None:
    """SIGTERM (Kafka shuts down cleanly), then SIGKILL to its whole session if it lingers."""
    child = _CHILDREN.pop(pid, None)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, STOP_TIMEOUT_S):
        log.warning("Kafka broker pid %d ignored SIGTERM for %g s; killing it", pid, STOP_TIMEOUT_S)
        try:
            os.killpg(pid, signal.SIGKILL)  # started in its own session: pgid == pid
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, KILL_TIMEOUT_S)
    if child is not None:
        child.wait()  # collect its status for Popen (returns at once if reaped above)


def stop(settings: Settings) -> bool:
    """Stop the local broker of this data dir; True if one was running. Leaves no process and no pid file."""
    paths = BrokerPaths.for_settings(settings)
    if not paths.root.exists():
        return False
    with _locked(paths):
        pid = _find_broker_pid(paths)
        if pid is not None:
            _terminate(pid)
            if _is_our_broker(pid, paths):
                raise BrokerError(f"the Kafka broker (pid {pid}) is still running after SIGKILL")
        _forget_pid(paths)
        return pid is not None


def ensure_running(settings: Settings) -> None:
    """Make sure a broker answers for these settings, starting the local one if needed (idempotent).

    When STREAM_RECO_BOOTSTRAP points somewhere else than the local broker's ports, nothing is started: that
    cluster must already answer (so tests can run against a shop's own Kafka).
    """
    if not _bootstrap_is_local(settings):
        if _probe_brokers(settings.kafka_client_kwargs(), READY_PROBE_TIMEOUT_S) > 0:
            return
        raise BrokerError(f"the Kafka cluster at {settings.bootstrap} does not answer a metadata request. "
                          f"The local broker is only started when STREAM_RECO_BOOTSTRAP points at "
                          f"{LOCAL_HOST}:{settings.broker_port}.")
    if is_ready(settings):
        return
    start(settings)


def status(settings: Settings, timeout_s: float = STATUS_TIMEOUT_S) -> BrokerStatus:
    """Readiness (a real metadata request) plus what the data dir knows about the running broker."""
    paths = BrokerPaths.for_settings(settings)
    pid = _find_broker_pid(paths) if paths.root.exists() else None
    version = settings.kafka_version
    with contextlib.suppress(OSError, ValueError):
        if pid is not None:
            version = json.loads(paths.state_file.read_text(encoding="utf-8")).get("kafka_version", version)
    cluster_id = None
    with contextlib.suppress(OSError):
        for line in paths.meta_properties.read_text(encoding="utf-8").splitlines():
            if line.startswith("cluster.id="):
                cluster_id = line.split("=", 1)[1].strip()
    brokers = _probe_brokers(local_client_kwargs(settings), timeout_s)
    return BrokerStatus(ready=brokers > 0, pid=pid, version=version, port=settings.broker_port,
                        controller_port=settings.controller_port, sasl_port=settings.broker_sasl_port,
                        data_dir=paths.root, cluster_id=cluster_id, brokers=brokers)


# --- command line ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exit_codes(ctx: click.Context) -> Iterator[None]:
    """BrokerSetupError -> exit 2 (configuration), BrokerError -> exit 1, each with its message on stderr."""
    try:
        yield
    except BrokerSetupError as exc:
        click.echo(f"stream-reco broker: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    except BrokerError as exc:
        click.echo(f"stream-reco broker: {exc}", err=True)
        ctx.exit(EXIT_FAILURE)


def _cli_settings(ctx: click.Context) -> Settings:
    """The settings the top-level `stream-reco` loaded (or the environment's, when this group runs alone)."""
    state = ctx.find_object(CliState)
    return state.settings if state is not None else CliState(config_file=None, verbose=0).settings


@click.group("broker")
def broker_cli() -> None:
    """Start, stop or check the local Apache Kafka (KRaft) broker on 127.0.0.1.

    Needs Java 17+ and Maven (which downloads Kafka's jars once). Data, logs and the pid file live under
    <data dir>/kafka (STREAM_RECO_DATA_DIR); ports and heap come from the broker_* settings.
    """


@broker_cli.command("start")
@click.pass_context
def start_cmd(ctx: click.Context) -> None:
    """Start the broker (if not running) and wait until it answers. Exit 0 when it does."""
    settings = _cli_settings(ctx)
    began = time.monotonic()
    with _exit_codes(ctx):
        pid, started = _start(settings)
    where = f"{LOCAL_HOST}:{settings.broker_port}"
    if started:
        click.echo(f"Kafka {settings.kafka_version} ready on {where} (pid {pid}, "
                   f"{time.monotonic() - began:.1f} s); data in {BrokerPaths.for_settings(settings).root}")
    else:
        click.echo(f"Kafka already running on {where} (pid {pid})")


@broker_cli.command("stop")
@click.pass_context
def stop_cmd(ctx: click.Context) -> None:
    """Stop the broker (SIGTERM, then SIGKILL after a grace period). Exit 0 also when none was running."""
    settings = _cli_settings(ctx)
    with _exit_codes(ctx):
        stopped = stop(settings)
    click.echo("Kafka broker stopped" if stopped else "no Kafka broker was running from this data dir")


@broker_cli.command("status")
@click.option("--timeout", "timeout_s", type=float, default=STATUS_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the metadata answer.")
@click.pass_context
def status_cmd(ctx: click.Context, timeout_s: float) -> None:
    """Exit 0 only if the broker answers a metadata request; 4 if it does not."""
    settings = _cli_settings(ctx)
    info = status(settings, timeout_s)
    listeners = f"{LOCAL_HOST}:{info.port} (controller {LOCAL_HOST}:{info.controller_port}"
    listeners += f", SASL_PLAINTEXT {LOCAL_HOST}:{info.sasl_port})" if info.sasl_port else ")"
    pid_text = str(info.pid) if info.pid is not None else "none from this data dir"
    click.echo(f"broker:     {'ready' if info.ready else 'NOT READY'}\n"
               f"version:    {info.version}\n"
               f"listeners:  {listeners}\n"
               f"pid:        {pid_text}\n"
               f"data dir:   {info.data_dir}\n"
               f"cluster id: {info.cluster_id or '-'}")
    if not info.ready:
        ctx.exit(EXIT_BROKER_NOT_READY)


@broker_cli.command("fetch")
@click.option("--refresh", is_flag=True, help="Run Maven even if the classpath is already cached.")
@click.pass_context
def fetch_cmd(ctx: click.Context, refresh: bool) -> None:
    """Only resolve (download) the broker's jars for settings.kafka_version; start nothing."""
    settings = _cli_settings(ctx)
    with _exit_codes(ctx):
        jars = fetch(settings, refresh=refresh)
    click.echo(f"Kafka {settings.kafka_version}: {len(jars)} jars, classpath in "
               f"{BrokerPaths.for_settings(settings).classpath_file}")
