"""One frozen settings object for every part of stream_reco, its settings grouped in sections.

Every setting has an environment variable ``STREAM_RECO_<FIELD NAME IN UPPER CASE>`` (the names are part of
the external contract, ../shared/docs/contracts.md) and a key in an optional TOML file (``--config FILE`` or
``STREAM_RECO_CONFIG``), under its section's table: ``[kafka]``, ``[security]``, ``[worker]``, ``[ranking]``,
``[index]`` or ``[tools]`` (`SECTIONS`). A file may also give keys at its top level, without a table: that was
the only form before sections existed, and it keeps working. A key in the wrong table, an unknown key or table,
and a key given twice (flat and in its table) are errors that name the key, so a typo never passes silently.
Precedence, lowest first: the defaults below, the TOML file, the environment, explicit overrides.

The section of each field is recorded once, in its metadata (`_doc`); the README's configuration tables,
config.example.toml and `stream-reco config` are all generated from it, and tests check them against it.

A few fields are *internal*: workarounds for faust-streaming failures, or values other code relies on (see
`INTERNAL_FIELDS`). A shop has no reason to change them, and a wrong value breaks what they protect, so they
have no environment variable or TOML key and are not documented as settings; they stay fields so that code and
tests can set them with `Settings.replace`. Settings handed to a child process (`to_env`) carry the internals
that differ from their defaults in one private variable (`INTERNALS_ENV`), so a worker started by a test or the
demo runs with the same values as its parent.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAM_RECO_"
SECRET_FIELDS = frozenset({"sasl_password", "ssl_password"})

#: the sections of the settings, in the order they are documented; the text says what belongs in each
SECTIONS: Final[dict[str, str]] = {
    "kafka": "connection to the Kafka cluster, the contract's topics, the stream processor's id and partitions",
    "security": "TLS and SASL of every Kafka client (secrets are masked wherever settings are printed or logged)",
    "worker": "the stream processing worker: batching, commits, timers, local data, HTTP, and the limits on the "
              "state it keeps (per visitor and per worker)",
    "ranking": "how the recommender builds and ranks a visitor's list",
    "index": "the model artifact, the item embeddings and their nearest-neighbour index (annoy or exact)",
    "tools": "the local development broker, training, evaluation, benchmarks and the demo",
}

#: private variable through which `to_env` hands internal fields (JSON) to a child process; not a setting
INTERNALS_ENV: Final = "_STREAM_RECO_INTERNALS"


#: the largest visitor state a worker writes to its changelog topic: below the broker's default
#: `max.message.bytes` (1048588) that faust's changelog topics get, with room for the key and the record overhead
MAX_CHANGELOG_MESSAGE_BYTES = 1_000_000


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "stream-reco")


def _doc(default: Any, doc: str, section: str, *, common: bool = False, internal: bool = False,
         core: bool = False) -> Any:
    """A dataclass field whose help text and section travel with it (one source for the loader, `stream-reco
    config`, the README and config.example.toml).

    `common`: a setting most shops set (config.example.toml shows these first). `internal`: not a user setting
    (no environment variable or TOML key; see the module docstring). `core`: a field outside the ranking and
    index sections that the pure core needs all the same (a bound on the state it keeps; `CoreSettings`).
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown settings section {section!r}")
    metadata = {"doc": doc, "section": section, "common": common, "internal": internal, "core": core}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SettingInfo:
    """What is documented about one field: `Settings.describe` lists them."""

    name: str
    env: str
    default: Any
    doc: str
    section: str
    common: bool
    internal: bool


@dataclass(frozen=True)
class Settings:
    """All settings, flat for code (`settings.list_size`); sections exist in files, docs and output only.

    Fields are declared section by section; each one's section is in its `_doc` metadata, not in these comments.
    """

    # --- [kafka] (names and defaults of the topics and app_id are fixed by docs/contracts.md) ---
    bootstrap: str = _doc("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated", "kafka", common=True)
    events_topic: str = _doc("shop.events", "behaviour events topic (key: user_id or session_id)", "kafka",
                             common=True)
    catalog_topic: str = _doc("shop.catalog", "catalog topic (key: item_id)", "kafka", common=True)
    recommendations_topic: str = _doc("reco.recommendations", "output topic, compacted by visitor key", "kafka",
                                      common=True)
    dead_letter_topic: str = _doc("reco.dead-letter", "rejected messages with the reason", "kafka", common=True)
    app_id: str = _doc("stream-reco", "stream processor id: consumer group and changelog topic prefix", "kafka",
                       common=True)
    partitions: int = _doc(6, "partitions of topics stream_reco creates", "kafka", common=True)
    replication_factor: int = _doc(1, "replication factor of topics stream_reco creates", "kafka", common=True)
    max_message_bytes: int = _doc(
        1_000_000, "largest accepted event or catalog message; larger is dead-lettered", "kafka")
    broker_session_timeout_s: float = _doc(
        10.0, "consumer group session timeout; rebalances take ~half", "kafka")

    # --- [security] (secrets are never logged) ---
    security_protocol: str = _doc("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", "security",
                                  common=True)
    sasl_mechanism: str = _doc("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: no SASL)", "security",
                               common=True)
    sasl_username: str = _doc("", "SASL user name", "security", common=True)
    sasl_password: str = _doc("", "SASL password (secret)", "security", common=True)
    ssl_cafile: str = _doc("", "CA bundle that signed the broker's certificate", "security", common=True)
    ssl_certfile: str = _doc("", "client certificate (mutual TLS)", "security")
    ssl_keyfile: str = _doc("", "client private key (mutual TLS)", "security")
    ssl_password: str = _doc("", "password of the client private key (secret)", "security")

    # --- [worker] ---
    data_dir: str = _doc(_default_data_dir, "local state, model artifacts and broker data", "worker", common=True)
    web_host: str = _doc(
        "127.0.0.1", "address the worker's HTTP server binds (0.0.0.0 inside containers)", "worker")
    web_port: int = _doc(6066, "HTTP port of the worker (GET /recommendations/{id}); 0 disables it", "worker")
    web_advertised_host: str = _doc(
        "", "host name or address other workers reach this worker's HTTP server at: a pull for a visitor another "
        "worker owns is forwarded there (empty: this machine's host name; a pod IP in Kubernetes)", "worker")
    coalesce_ms: int = _doc(5, "a burst of events from one visitor within this window yields one list", "worker")
    batch_size: int = _doc(256, "most events one worker step takes from the stream at once", "worker")
    commit_interval_s: float = _doc(1.0, "how often processed offsets are committed", "worker")
    producer_linger_ms: int = _doc(1, "producer batching delay; small keeps lists fresh", "worker")
    model_poll_s: float = _doc(5.0, "how often a worker looks for a newer model artifact (hot swap)", "worker")
    catalog_wait_s: float = _doc(
        30.0, "at start, longest wait for the catalog topic to be read before events", "worker")
    max_clock_skew_s: float = _doc(
        300.0, "an event stamped more than this after its arrival (wall clock, or the Kafka record time if earlier) "
        "is dead-lettered as from the future; old timestamps are accepted (replays); 0 turns the check off", "worker")
    visitor_ttl_days: float = _doc(
        90.0, "a visitor without events for this long (in event time: the latest event the worker applied) is "
        "deleted from the table and its changelog by a background sweep; 0 keeps visitors forever", "worker")
    stats_snapshot_interval_s: float = _doc(
        300.0, "how often a worker snapshots its shop-wide statistics to data_dir/snapshots (also at a clean stop); a "
        "restart replays only the events after the snapshot; a snapshot holds events back ~1-3 s per million "
        "events learned; 0 turns snapshots off", "worker")
    pushed_lists_max_visitors: int = _doc(
        100_000, "visitors whose current pushed list a worker remembers, so that a list showing an item that goes out "
        "of stock or is deleted is republished without it (~3 kB each: the list as published and its index; least "
        "recently published dropped: their "
        "list is corrected at their next event)", "worker")
    stats_feed_max_visitors: int = _doc(
        50_000, "visitors of other workers' partitions whose last items the statistics feed keeps for co-visitation "
        "(least recently seen dropped; ~2-3 kB each)", "worker")
    max_state_bytes: int = _doc(
        262_144, "largest serialised visitor state (keep under the broker's message.max.bytes); oldest parts trimmed",
        "worker", core=True)
    history_cap: int = _doc(50, "items kept in a visitor's recent history", "worker", core=True)
    owned_cap: int = _doc(
        200, "purchased and dismissed items kept exactly per visitor (older ones: a Bloom filter, never shown)",
        "worker", core=True)
    stats_max_items: int = _doc(
        1_000_000, "items the shop-wide popularity and co-visitation keep per worker (least useful dropped)",
        "worker", core=True)
    popularity_max_categories: int = _doc(
        10_000, "category paths with a best-seller list per worker (the weakest dropped; memory bound)",
        "worker", core=True)
    sknn_max_sessions: int = _doc(
        100_000, "recent sessions the session-kNN index keeps per worker (memory bound)", "worker", core=True)
    dedup_window: int = _doc(
        64, "internal: recent event_ids kept per visitor to drop redelivered duplicates; at-least-once delivery "
        "relies on it covering every event (and login join) a crash or rebalance delivers again",
        "worker", internal=True, core=True)
    skip_check_s: float = _doc(
        2.0, "internal (a faust workaround): how often a worker checks that every event its consumer committed or "
        "fetched was applied (faust skips or drops some around rebalances) and repairs what was not; 0 turns the "
        "checks off", "worker", internal=True)
    delivery_stall_s: float = _doc(
        15.0, "internal (a faust workaround): a partition whose waiting events do not reach the worker for this "
        "long is re-read from the worker's position, and the worker restarts if that does not help (faust can "
        "wedge); 0 turns it off", "worker", internal=True)
    recovery_stall_s: float = _doc(
        90.0, "internal (a faust workaround): a worker whose table recovery makes no progress for this long "
        "restarts itself (a faust-streaming recovery can hang after a rebalance); 0 turns it off", "worker",
        internal=True)

    # --- [ranking] ---
    list_size: int = _doc(10, "items per published list", "ranking", common=True)
    mmr_lambda: float = _doc(
        0.9, "relevance vs diversity trade-off of MMR re-ranking (1 = relevance only; 0.9 costs ~2-4% HR@20)",
        "ranking", common=True)
    max_category_share: float = _doc(
        0.4, "most of a list one leaf category may fill (0.4: 4 of 10; rounded down, at least 1); 0 = no cap",
        "ranking", common=True)
    purchase_suppress_days: float = _doc(14.0, "days a purchased item's category is not recommended", "ranking",
                                         common=True)
    weight_view: float = _doc(1.0, "pull of a view on the visitor's interest vector", "ranking")
    weight_add_to_cart: float = _doc(3.0, "pull of an add-to-cart", "ranking")
    weight_purchase: float = _doc(5.0, "pull of a purchase", "ranking")
    weight_dismiss: float = _doc(-2.0, "push of a dismissal (negative: away from the item)", "ranking")
    interest_half_life_h: float = _doc(72.0, "half-life of a visitor's long-term interests, hours", "ranking")
    max_interests: int = _doc(4, "interest vectors per visitor (one per distinct region of item space)", "ranking")
    interest_split_cosine: float = _doc(
        0.35, "an item less similar than this to every interest opens a new one", "ranking")
    session_gap_s: int = _doc(1800, "inactivity that ends a session, seconds", "ranking")
    viewed_penalty: float = _doc(
        0.9, "score multiplier for items already viewed in the session (1 = off; re-views are frequent targets)",
        "ranking")
    max_seen_slots: int = _doc(
        2, "most of a list's visible slots that items seen in the session may take (0: none; list_size or more: "
        "no cap); the item of the view that triggered a list is never in it", "ranking")
    mmr_keep_top: int = _doc(3, "list slots filled by relevance alone before MMR diversifies the rest", "ranking")
    overfetch: int = _doc(
        5, "internal: candidates fetched per list slot, so that filtering by the rules still fills the list (an "
        "implementation detail of the candidate search, not a ranking choice)", "ranking", internal=True)
    popularity_half_life_h: float = _doc(168.0, "half-life of category popularity, hours", "ranking")
    covis_window: int = _doc(10, "recent events of a visitor that count as co-visited", "ranking")
    covis_neighbours: int = _doc(50, "co-visited neighbours kept per item", "ranking")
    covis_anchor_items: int = _doc(
        5, "the visitor's last distinct items whose co-visited neighbours are candidates", "ranking")
    weight_ann: float = _doc(
        0.1, "weight of embedding neighbours in the blend (each source scaled to [0, 1])", "ranking")
    weight_covis: float = _doc(1.0, "weight of co-visitation candidates in the blend", "ranking")
    weight_popular: float = _doc(
        0.01, "weight of category popularity in the blend (a filler; cold start: alone)", "ranking")
    weight_recent: float = _doc(
        1.0, "weight of the visitor's own recently viewed items in the blend (repeat views; viewed_penalty applies)",
        "ranking")
    recent_items: int = _doc(
        3, "the visitor's last distinct items offered again as candidates (weight_recent)", "ranking")
    weight_sknn: float = _doc(
        0.0, "weight of session-kNN candidates (items of similar recent sessions; > 0 keeps a shop-wide index)",
        "ranking")
    sknn_neighbours: int = _doc(100, "most similar recent sessions whose items are session-kNN candidates", "ranking")
    sknn_sessions_per_item: int = _doc(
        200, "latest sessions remembered per item (session-kNN search breadth)", "ranking")
    scope_to_page_category: bool = _doc(False, "restrict lists to the page's category and its siblings", "ranking")
    attribute_boosts: str = _doc(
        "", "comma-separated attr=value:multiplier boosts, e.g. brand=Acme:1.2", "ranking")

    # --- [index] ---
    model: str = _doc(
        "latest", "model artifact to load: a path, or `latest` (newest under data_dir/models)", "index", common=True)
    embedding_dim: int = _doc(64, "item and visitor embedding dimension", "index")
    exact_index_max_items: int = _doc(
        30_000, "below this catalogue size exact search is used (bench/ann.py: annoy wins from ~30k, 4x at 100k)",
        "index")
    annoy_n_trees: int = _doc(20, "annoy trees (bench/ann.py: 20 gives the fastest recall >= 0.95)", "index")
    annoy_search_k: int = _doc(
        2000, "annoy search_k per query (recall >= 0.95 to ~100k items; ~8000 at 1M)", "index")
    delta_rebuild_items: int = _doc(
        1000, "items added since the last build that trigger a background rebuild", "index")
    seed: int = _doc(42, "seed of every random choice (annoy build, simulation, training)", "index")

    # --- [tools]: local broker, training, evaluation ---
    kafka_version: str = _doc(
        "4.1.1", "Apache Kafka version of the local broker (Maven artifact kafka_2.13)", "tools")
    broker_port: int = _doc(9092, "port of the local broker on 127.0.0.1", "tools")
    controller_port: int = _doc(9093, "KRaft controller port of the local broker", "tools")
    broker_heap: str = _doc("512m", "JVM heap of the local broker", "tools")
    broker_sasl_port: int = _doc(
        0, "extra SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256/512) of the local broker; 0 = off. "
        "Its one user is sasl_username / sasl_password", "tools")
    shared_data_dir: str = _doc(
        "", "folder of the shared evaluation data sets (empty: ../shared/data beside the repo)", "tools")
    train_ppmi_smoothing: float = _doc(
        0.75, "context-distribution smoothing exponent of the training PPMI matrix", "tools")
    train_cold_interactions: float = _doc(
        5.0, "interactions at which an item vector is half co-occurrence, half content", "tools")
    train_build_annoy: bool = _doc(False, "prebuild the annoy index into the model artifact", "tools")
    eval_list_k: int = _doc(20, "length of the lists the evaluation asks for (the protocol's K)", "tools")
    eval_train_fraction: float = _doc(
        0.8, "share of the log, by time, that every method learns from before the test", "tools")
    eval_rpop_half_life_h: float = _doc(
        0.0, "half-life of the RPOP baseline, hours (0: the dataset's convention)", "tools")
    eval_sample_visitors: int = _doc(
        300, "visitors whose lists are compared for the personalisation measure", "tools")

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
        """These settings as variables, to hand to a child process (worker, tools): STREAM_RECO_* for every
        setting, and the internal fields that differ from their defaults in `INTERNALS_ENV`, so that a worker a
        test starts after `Settings.replace(recovery_stall_s=...)` runs with that value too."""
        out = {}
        internals: dict[str, Any] = {}
        for info in self.describe(include_internal=True):
            value = getattr(self, info.name)
            if info.internal:
                if value != info.default:
                    internals[info.name] = value
                continue
            out[info.env] = str(value).lower() if isinstance(value, bool) else str(value)
        if internals:
            out[INTERNALS_ENV] = json.dumps(internals, sort_keys=True)
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def core(self) -> CoreSettings:
        """The part of these settings the pure core receives (`CoreSettings`): no connection, security, worker
        or tool settings reach ranking code, so a secret cannot leak through it and a ranking change cannot
        depend on them."""
        return CoreSettings(**{name: getattr(self, name) for name in CORE_FIELDS})

    @classmethod
    def describe(cls, include_internal: bool = False) -> list[SettingInfo]:
        """Every setting (and, if asked, every internal field) with its documentation, section by section in
        the order of `SECTIONS`, and in declaration order within a section."""
        rows = []
        for f in fields(cls):
            if f.metadata["internal"] and not include_internal:
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            rows.append(SettingInfo(
                name=f.name, env=ENV_PREFIX + f.name.upper(), default=default, doc=f.metadata["doc"],
                section=f.metadata["section"], common=f.metadata["common"], internal=f.metadata["internal"]))
        order = list(SECTIONS)
        return sorted(rows, key=lambda info: order.index(info.section))

    @classmethod
    def field_docs(cls) -> list[tuple[str, str, Any, str]]:
        """(name, env variable, default, doc) for every setting (internal fields are not settings)."""
        return [(info.name, info.env, info.default, info.doc) for info in cls.describe()]

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from defaults, then a TOML file, then the environment, then `overrides`.

        `overrides` come from code (command-line options), so they may set internal fields too.
        """
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
        known = {f.name: f for f in fields(cls)}
        if config_file:
            values.update(_read_toml(Path(config_file), known))
        for name, f in known.items():
            variable = ENV_PREFIX + name.upper()
            raw = env.get(variable)
            if raw is None:
                continue
            if f.metadata["internal"]:
                # not an error: a deployment may still set a variable from before the field became internal
                log.warning("%s is ignored: %s is internal to stream_reco, not a setting", variable, name)
                continue
            values[name] = _coerce(f, raw, source=variable)
        values.update(_read_internals(env.get(INTERNALS_ENV), known))
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
        if self.stats_snapshot_interval_s < 0:
            raise SettingsError("stats_snapshot_interval_s must be >= 0 (0 turns snapshots off)")
        if self.stats_feed_max_visitors < 1:
            raise SettingsError("stats_feed_max_visitors must be >= 1")
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise SettingsError(f"security_protocol {self.security_protocol!r} is not supported")
        if self.sasl_mechanism not in ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise SettingsError(f"sasl_mechanism {self.sasl_mechanism!r} is not supported")
        # a visitor state is one changelog message: a limit above what the worker may write would let the core keep
        # states the worker then refuses to write (the table and its changelog would drift apart)
        if self.max_state_bytes > MAX_CHANGELOG_MESSAGE_BYTES:
            raise SettingsError(f"max_state_bytes ({self.max_state_bytes}) must not exceed "
                                f"{MAX_CHANGELOG_MESSAGE_BYTES}, the largest state a worker writes to its changelog")


#: every internal field: not settable from the environment or a TOML file (see the module docstring)
INTERNAL_FIELDS: Final = frozenset(f.name for f in fields(Settings) if f.metadata["internal"])


#: the sections whose settings the pure core (stream_reco/core/) receives
CORE_SECTIONS: Final = ("ranking", "index")
#: the fields of `CoreSettings`: the core sections' fields, and the few bounds on the state the core keeps that
#: are documented with the worker (`_doc(core=True)`)
CORE_FIELDS: Final = tuple(f.name for f in fields(Settings)
                           if f.metadata["section"] in CORE_SECTIONS or f.metadata["core"])

#: The settings the core receives: the ranking and index settings, and the bounds of the state it keeps, as
#: a frozen dataclass with the same field names, types and defaults as `Settings` (built from its fields, so
#: the two cannot drift). `Settings.core()` makes one; `CoreSettings()` alone gives the defaults (tests).
#: `core_settings` accepts either, so callers of the core may hand it the whole `Settings`.
CoreSettings = dataclasses.make_dataclass(
    "CoreSettings",
    [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory,
                                        metadata=f.metadata))
     for f in fields(Settings) if f.name in CORE_FIELDS],
    frozen=True,
    namespace={"__module__": __name__,
               "replace": lambda self, **changes: dataclasses.replace(self, **changes)},
)


def core_settings(settings: Settings | CoreSettings) -> CoreSettings:  # type: ignore[valid-type]
    """`settings` as the core receives them: a `Settings` is cut down to its core fields (`Settings.core`)."""
    return settings.core() if isinstance(settings, Settings) else settings


def _unknown(key: str, where: str, candidates: list[str]) -> SettingsError:
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SettingsError(f"unknown setting {key!r} in {where}{hint}")


def _read_toml(path: Path, known: dict[str, dataclasses.Field[Any]]) -> dict[str, Any]:
    """The settings a TOML file gives: keys in their section's table, or flat at the top level (the form from
    before sections, kept working). Anything else is an error that names the key and, where it can, the fix."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    settable = [name for name, f in known.items() if not f.metadata["internal"]]
    values: dict[str, Any] = {}
    places: dict[str, str] = {}  # where each key was given, for the "given twice" error

    def take(key: str, value: Any, section: str | None) -> None:
        where = f"[{section}] of {path}" if section else str(path)
        f = known.get(key)
        if f is None:
            raise _unknown(key, where, settable)
        if f.metadata["internal"]:
            raise SettingsError(f"{key!r} in {where} is not a setting: it is internal to stream_reco "
                                "(a workaround or a value other code relies on)")
        right = f.metadata["section"]
        if section is not None and section != right:
            raise SettingsError(f"{key!r} belongs in the [{right}] section, not [{section}] ({path})")
        if key in places:
            raise SettingsError(f"{key!r} is given twice in {path}: in {places[key]} and in {where}")
        places[key] = f"[{section}]" if section else "the top level"
        values[key] = _coerce(f, value, source=where)

    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{key!r} in {path} is a section: write its settings under [{key}]")
            for inner_key, inner_value in value.items():
                take(inner_key, inner_value, key)
        elif isinstance(value, dict) and key not in known:
            raise SettingsError(f"unknown section [{key}] in {path}; the sections are "
                                + ", ".join(f"[{s}]" for s in SECTIONS))
        else:
            take(key, value, None)
    return values


def _read_internals(raw: str | None, known: dict[str, dataclasses.Field[Any]]) -> dict[str, Any]:
    """Internal fields a parent process handed over with `Settings.to_env` (JSON in `INTERNALS_ENV`)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{INTERNALS_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{INTERNALS_ENV} must be a JSON object")
    values = {}
    for key, value in data.items():
        f = known.get(key)
        if f is None or not f.metadata["internal"]:
            raise SettingsError(f"{INTERNALS_ENV} may only carry internal fields, not {key!r}")
        values[key] = _coerce(f, value, source=INTERNALS_ENV)
    return values


# --- documentation generated from the fields: `stream-reco config`, the README tables, config.example.toml ---

#: how the data_dir default is shown in documentation: the real one depends on the machine
_DATA_DIR_SHOWN = "~/.cache/stream-reco"


def toml_value(value: Any) -> str:
    """`value` written as a TOML value (strings with JSON escapes, which TOML's basic strings share)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def render_markdown() -> str:
    """The README's configuration tables: one per section (internal fields are not settings, so not listed)."""
    infos = Settings.describe()
    lines: list[str] = []
    for section, about in SECTIONS.items():
        lines += [f"**`[{section}]`**: {about}.", "", "| setting | env variable | default | meaning |",
                  "|---|---|---|---|"]
        for info in (i for i in infos if i.section == section):
            shown = "(user cache dir)/stream-reco" if info.name == "data_dir" else info.default
            lines.append(f"| {info.name} | `{info.env}` | `{shown!r}` | {info.doc} |")
        lines.append("")
    return "\n".join(lines[:-1])


def render_toml_example() -> str:
    """config.example.toml: first the settings most shops set, in their sections, with their defaults; then
    every other setting, commented out with its default. Each setting appears once."""
    infos = Settings.describe()
    out = [
        "# stream_reco settings: config.example.toml, generated by `stream-reco config --format toml`.",
        "# Use with `stream-reco --config FILE` or STREAM_RECO_CONFIG=FILE; environment variables",
        "# (STREAM_RECO_<NAME>, named after each setting below) win over this file.",
        "# Every key belongs in its section's table; a key in the wrong table, or an unknown key, is an error.",
        "# Keys at the top level, before any table (the form before sections existed), still work.",
        "#",
        "# First, what most shops set; the values shown are the defaults. Secrets are better passed in",
        "# the environment (STREAM_RECO_SASL_PASSWORD) than written here.",
    ]

    def entry(info: SettingInfo, commented: bool) -> list[str]:
        shown = _DATA_DIR_SHOWN if info.name == "data_dir" else info.default
        doc = info.doc + (" (default: stream-reco in the user's cache dir)" if info.name == "data_dir" else "")
        prefix = "# " if commented else ""
        return ["", f"# {doc} ({info.env})", f"{prefix}{info.name} = {toml_value(shown)}"]

    opened = []
    for section in SECTIONS:
        common = [i for i in infos if i.section == section and i.common]
        if common:
            opened.append(section)
            out += ["", f"[{section}]", f"# {SECTIONS[section]}"]
            for info in common:
                out += entry(info, commented=info.name in SECRET_FIELDS or info.name == "data_dir")
    out += ["", "", "# " + "-" * 100,
            "# Everything else, commented out, with its default. To set one, uncomment it in its section's",
            "# table above (TOML opens a table once), or uncomment the header of a section not used above."]
    for section, about in SECTIONS.items():
        rest = [i for i in infos if i.section == section and not i.common]
        if not rest:
            continue
        if section in opened:
            out += ["", "", f"# [{section}], continued: these belong under [{section}] above"]
        else:
            out += ["", "", f"# [{section}]", f"# {about}"]
        for info in rest:
            out += entry(info, commented=True)
    out += ["", "", "# Not settings (internal to stream_reco, accepted neither here nor from the environment):",
            "# " + ", ".join(sorted(INTERNAL_FIELDS))]
    return "\n".join(out)


def render_effective(settings: Settings, doc: bool = False) -> str:
    """The effective values, section by section, as TOML (secrets masked); the internal fields last, commented
    out, since they are shown for diagnosis only. `doc` adds each setting's variable, default and meaning."""
    values = settings.masked()
    out: list[str] = []
    infos = Settings.describe(include_internal=True)
    for section in SECTIONS:
        out += ([""] if out else []) + [f"[{section}]"]
        for info in (i for i in infos if i.section == section and not i.internal):
            line = f"{info.name} = {toml_value(values[info.name])}"
            if doc:
                line += f"    # {info.env}; default {toml_value(info.default)}; {info.doc}"
            out.append(line)
    out += ["", "# internal, not settings (no environment variable or config key):"]
    for info in (i for i in infos if i.internal):
        line = f"# {info.name} = {toml_value(values[info.name])}"
        if doc:
            line += f"    # default {toml_value(info.default)}; {info.doc}"
        out.append(line)
    return "\n".join(out)


def _coerce(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    typ = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if isinstance(value, dict | list):
            raise ValueError(value)
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
