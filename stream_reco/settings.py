"""One frozen settings object for every part of stream_reco.

Every field has an environment variable ``STREAM_RECO_<FIELD NAME IN UPPER CASE>`` and a key of the
same (lower-case) name in an optional TOML file (``--config FILE`` or ``STREAM_RECO_CONFIG``).
Precedence, lowest first: the defaults below, the TOML file, the environment, explicit overrides.
The defaults are documented here once; ``stream-reco config`` prints the effective values
(secrets masked) and the README's configuration table is checked against this module by a test.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "STREAM_RECO_"
SECRET_FIELDS = frozenset({"sasl_password", "ssl_password"})


#: the largest visitor state a worker writes to its changelog topic: below the broker's default
#: `max.message.bytes` (1048588) that faust's changelog topics get, with room for the key and the record overhead
MAX_CHANGELOG_MESSAGE_BYTES = 1_000_000


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "stream-reco")


def _doc(default: Any, doc: str) -> Any:
    """A dataclass field whose help text travels with it (used by `stream-reco config` and the README)."""
    if callable(default):
        return field(default_factory=default, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    # --- Kafka and topics (names fixed by docs/contracts.md) ---
    bootstrap: str = _doc("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated")
    events_topic: str = _doc("shop.events", "behaviour events topic (key: user_id or session_id)")
    catalog_topic: str = _doc("shop.catalog", "catalog topic (key: item_id)")
    recommendations_topic: str = _doc("reco.recommendations", "output topic, compacted by visitor key")
    dead_letter_topic: str = _doc("reco.dead-letter", "rejected messages with the reason")
    app_id: str = _doc("stream-reco", "stream processor id: consumer group and changelog topic prefix")
    data_dir: str = _doc(_default_data_dir, "local state, model artifacts and broker data")
    model: str = _doc("latest", "model artifact to load: a path, or `latest` (newest under data_dir/models)")
    list_size: int = _doc(10, "items per published list")
    partitions: int = _doc(6, "partitions of topics stream_reco creates")
    replication_factor: int = _doc(1, "replication factor of topics stream_reco creates")

    # --- security (secrets are never logged) ---
    security_protocol: str = _doc("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = _doc("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: no SASL)")
    sasl_username: str = _doc("", "SASL user name")
    sasl_password: str = _doc("", "SASL password (secret)")
    ssl_cafile: str = _doc("", "CA bundle that signed the broker's certificate")
    ssl_certfile: str = _doc("", "client certificate (mutual TLS)")
    ssl_keyfile: str = _doc("", "client private key (mutual TLS)")
    ssl_password: str = _doc("", "password of the client private key (secret)")
    max_message_bytes: int = _doc(1_000_000, "largest accepted event or catalog message; larger is dead-lettered")

    # --- worker ---
    coalesce_ms: int = _doc(5, "a burst of events from one visitor within this window yields one list")
    batch_size: int = _doc(256, "most events one worker step takes from the stream at once")
    broker_session_timeout_s: float = _doc(10.0, "consumer group session timeout; rebalances take ~half")
    web_port: int = _doc(6066, "HTTP port of the worker (GET /recommendations/{id}); 0 disables it")
    dedup_window: int = _doc(64, "recent event_ids kept per visitor to drop redelivered duplicates")
    web_host: str = _doc("127.0.0.1", "address the worker's HTTP server binds (0.0.0.0 inside containers)")
    commit_interval_s: float = _doc(1.0, "how often processed offsets are committed")
    skip_check_s: float = _doc(
        2.0, "how often a worker checks that every event its consumer committed or fetched was applied (faust "
        "skips or drops some around rebalances) and repairs what was not; 0 turns the checks off")
    delivery_stall_s: float = _doc(
        15.0, "a partition whose waiting events do not reach the worker for this long is re-read from the worker's "
        "position, and the worker restarts if that does not help (faust can wedge); 0 turns it off")
    recovery_stall_s: float = _doc(
        90.0, "a worker whose table recovery makes no progress for this long restarts itself (a faust-streaming "
        "recovery can hang after a rebalance); 0 turns it off")
    producer_linger_ms: int = _doc(1, "producer batching delay; small keeps lists fresh")
    model_poll_s: float = _doc(5.0, "how often a worker looks for a newer model artifact (hot swap)")
    catalog_wait_s: float = _doc(30.0, "at start, longest wait for the catalog topic to be read before events")
    max_clock_skew_s: float = _doc(
        300.0, "an event stamped more than this after its arrival (wall clock, or the Kafka record time if earlier) "
        "is dead-lettered as from the future; old timestamps are accepted (replays); 0 turns the check off")
    visitor_ttl_days: float = _doc(
        90.0, "a visitor without events for this long (in event time: the latest event the worker applied) is "
        "deleted from the table and its changelog by a background sweep; 0 keeps visitors forever")

    # --- recommendation model ---
    embedding_dim: int = _doc(64, "item and visitor embedding dimension")
    weight_view: float = _doc(1.0, "pull of a view on the visitor's interest vector")
    weight_add_to_cart: float = _doc(3.0, "pull of an add-to-cart")
    weight_purchase: float = _doc(5.0, "pull of a purchase")
    weight_dismiss: float = _doc(-2.0, "push of a dismissal (negative: away from the item)")
    interest_half_life_h: float = _doc(72.0, "half-life of a visitor's long-term interests, hours")
    max_interests: int = _doc(4, "interest vectors per visitor (one per distinct region of item space)")
    interest_split_cosine: float = _doc(0.35, "an item less similar than this to every interest opens a new one")
    history_cap: int = _doc(50, "items kept in a visitor's recent history")
    owned_cap: int = _doc(
        200, "purchased and dismissed items kept exactly per visitor (older ones: a Bloom filter, never shown)"
    )
    max_state_bytes: int = _doc(
        262_144, "largest serialised visitor state (keep under the broker's message.max.bytes); oldest parts trimmed"
    )
    session_gap_s: int = _doc(1800, "inactivity that ends a session, seconds")
    purchase_suppress_days: float = _doc(14.0, "days a purchased item's category is not recommended")
    viewed_penalty: float = _doc(
        0.9, "score multiplier for items already viewed in the session (1 = off; re-views are frequent targets)"
    )
    mmr_lambda: float = _doc(
        0.9, "relevance vs diversity trade-off of MMR re-ranking (1 = relevance only; 0.9 costs ~2-4% HR@20)"
    )
    mmr_keep_top: int = _doc(3, "list slots filled by relevance alone before MMR diversifies the rest")
    max_category_share: float = _doc(
        0.4, "most of a list one leaf category may fill (0.4: 4 of 10; rounded down, at least 1); 0 = no cap"
    )
    overfetch: int = _doc(5, "candidates fetched per list slot, so filtering still fills the list")
    popularity_half_life_h: float = _doc(168.0, "half-life of category popularity, hours")
    covis_window: int = _doc(10, "recent events of a visitor that count as co-visited")
    covis_neighbours: int = _doc(50, "co-visited neighbours kept per item")
    stats_max_items: int = _doc(
        1_000_000, "items the shop-wide popularity and co-visitation keep per worker (least useful dropped)"
    )
    popularity_max_categories: int = _doc(
        10_000, "category paths with a best-seller list per worker (the weakest dropped; memory bound)"
    )
    covis_anchor_items: int = _doc(5, "the visitor's last distinct items whose co-visited neighbours are candidates")
    weight_ann: float = _doc(0.1, "weight of embedding neighbours in the blend (each source scaled to [0, 1])")
    weight_covis: float = _doc(1.0, "weight of co-visitation candidates in the blend")
    weight_popular: float = _doc(0.01, "weight of category popularity in the blend (a filler; cold start: alone)")
    weight_recent: float = _doc(
        1.0, "weight of the visitor's own recently viewed items in the blend (repeat views; viewed_penalty applies)"
    )
    recent_items: int = _doc(3, "the visitor's last distinct items offered again as candidates (weight_recent)")
    weight_sknn: float = _doc(
        0.0, "weight of session-kNN candidates (items of similar recent sessions; > 0 keeps a shop-wide index)"
    )
    sknn_neighbours: int = _doc(100, "most similar recent sessions whose items are session-kNN candidates")
    sknn_sessions_per_item: int = _doc(200, "latest sessions remembered per item (session-kNN search breadth)")
    sknn_max_sessions: int = _doc(100_000, "recent sessions the session-kNN index keeps per worker (memory bound)")
    scope_to_page_category: bool = _doc(False, "restrict lists to the page's category and its siblings")
    attribute_boosts: str = _doc("", "comma-separated attr=value:multiplier boosts, e.g. brand=Acme:1.2")

    # --- index ---
    exact_index_max_items: int = _doc(
        30_000, "below this catalogue size exact search is used (bench/ann.py: annoy wins from ~30k, 4x at 100k)"
    )
    annoy_n_trees: int = _doc(20, "annoy trees (bench/ann.py: 20 gives the fastest recall >= 0.95)")
    annoy_search_k: int = _doc(2000, "annoy search_k per query (recall >= 0.95 to ~100k items; ~8000 at 1M)")
    delta_rebuild_items: int = _doc(1000, "items added since the last build that trigger a background rebuild")
    seed: int = _doc(42, "seed of every random choice (annoy build, simulation, training)")

    # --- local broker ---
    kafka_version: str = _doc("4.1.1", "Apache Kafka version of the local broker (Maven artifact kafka_2.13)")
    broker_port: int = _doc(9092, "port of the local broker on 127.0.0.1")
    controller_port: int = _doc(9093, "KRaft controller port of the local broker")
    broker_heap: str = _doc("512m", "JVM heap of the local broker")
    broker_sasl_port: int = _doc(
        0, "extra SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256/512) of the local broker; 0 = off. "
        "Its one user is sasl_username / sasl_password")

    # --- training and evaluation ---
    shared_data_dir: str = _doc("", "folder of the shared evaluation data sets (empty: ../shared/data beside the repo)")
    train_ppmi_smoothing: float = _doc(0.75, "context-distribution smoothing exponent of the training PPMI matrix")
    train_cold_interactions: float = _doc(
        5.0, "interactions at which an item vector is half co-occurrence, half content"
    )
    train_build_annoy: bool = _doc(False, "prebuild the annoy index into the model artifact")
    eval_list_k: int = _doc(20, "length of the lists the evaluation asks for (the protocol's K)")
    eval_train_fraction: float = _doc(0.8, "share of the log, by time, that every method learns from before the test")
    eval_rpop_half_life_h: float = _doc(0.0, "half-life of the RPOP baseline, hours (0: the dataset's convention)")
    eval_sample_visitors: int = _doc(300, "visitors whose lists are compared for the personalisation measure")

    def masked(self) -> dict[str, Any]:
        """Values safe to print or log: secrets replaced by '***'."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out

    def __repr__(self) -> str:  # never leak secrets through logs or tracebacks
        inner = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"Settings({inner})"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection and security arguments shared by every aiokafka client we create."""
        kw: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.security_protocol != "PLAINTEXT":
            kw["security_protocol"] = self.security_protocol
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
                password=self.ssl_password or None,
            )
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        return kw

    def to_env(self) -> dict[str, str]:
        """These settings as STREAM_RECO_* variables, to hand to a child process (worker, tools)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[ENV_PREFIX + f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_docs(cls) -> list[tuple[str, str, Any, str]]:
        """(name, env variable, default, doc) for every setting, in declaration order."""
        rows = []
        for f in fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            rows.append((f.name, ENV_PREFIX + f.name.upper(), default, f.metadata.get("doc", "")))
        return rows

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from defaults, then a TOML file, then the environment, then `overrides`."""
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
        known = {f.name: f for f in fields(cls)}
        if config_file:
            path = Path(config_file)
            try:
                data = tomllib.loads(path.read_text())
            except FileNotFoundError as exc:
                raise SettingsError(f"config file not found: {path}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
            for key, value in data.items():
                if key not in known:
                    raise SettingsError(f"unknown setting {key!r} in {path}")
                values[key] = _coerce(known[key], value, source=str(path))
        for name, f in known.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _coerce(f, raw, source=ENV_PREFIX + name.upper())
        for key, value in overrides.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = _coerce(known[key], value, source="override")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.list_size < 1:
            raise SettingsError("list_size must be >= 1")
        if self.embedding_dim < 2:
            raise SettingsError("embedding_dim must be >= 2")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise SettingsError("mmr_lambda must be within [0, 1]")
        if not 0.0 <= self.max_category_share <= 1.0:
            raise SettingsError("max_category_share must be within [0, 1]")
        if self.max_interests < 1:
            raise SettingsError("max_interests must be >= 1")
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise SettingsError(f"security_protocol {self.security_protocol!r} is not supported")
        if self.sasl_mechanism not in ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise SettingsError(f"sasl_mechanism {self.sasl_mechanism!r} is not supported")
        # a visitor state is one changelog message: a limit above what the worker may write would let the core keep
        # states the worker then refuses to write (the table and its changelog would drift apart)
        if self.max_state_bytes > MAX_CHANGELOG_MESSAGE_BYTES:
            raise SettingsError(f"max_state_bytes ({self.max_state_bytes}) must not exceed "
                                f"{MAX_CHANGELOG_MESSAGE_BYTES}, the largest state a worker writes to its changelog")


def _coerce(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    typ = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if typ == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(str(value).replace("_", ""))
        if typ == "float":
            return float(value)
        return str(value)
    except ValueError as exc:
        raise SettingsError(f"{f.name} from {source}: {value!r} is not a valid {typ}") from exc
