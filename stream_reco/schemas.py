"""The validation layer at the edge: contract messages in, typed records or one `InvalidMessage` out.

The JSON Schema files in the repository's `schemas/` folder are the single source of truth for what a valid
message is; nothing here restates a rule by hand (a built wheel carries that same folder as the package data
`stream_reco/_schemas`, mapped there at build time by pyproject.toml, so git holds one copy; `schema_dir()`
says which copy a process uses). They are read once (lazily, on first use, or eagerly with
`load_schemas()` at worker start so that a broken install fails before it consumes anything), each is checked
as a draft 2020-12 schema with jsonschema, the reference implementation, and then compiled with fastjsonschema,
which turns a schema into plain Python code and is an order of magnitude cheaper per message on the hot path
(see `bench/validator_cost.py`).

fastjsonschema implements drafts 4 to 7 (plus some of 2019-09); the schemas use only keywords whose meaning is
the same in those drafts and in 2020-12, and `load_schemas()` refuses a schema that uses one of the keywords it
would silently ignore, so the compiled validators cannot drift from the reference one. The tests check both
validators give the same verdict on every example and on fuzzed documents.

Every failure is one exception type, `InvalidMessage`, carrying a reason and the failing field as a path
(`context.quantity`, `items[0].score`; None when the whole message is bad), which is what the dead-letter
record (`dead_letter_record`) reports. `decode_event` / `decode_item` never raise anything else, whatever the
bytes, so a bad message can never stop a worker.
"""

from __future__ import annotations

import base64
import copy
import importlib.resources
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from stream_reco.core.events import CatalogItem, Event

__all__ = [
    "DEAD_LETTER_RAW_CAP",
    "DEFAULT_MAX_BYTES",
    "KINDS",
    "SCHEMA_DIR_ENV",
    "InvalidMessage",
    "SchemaLoadError",
    "dead_letter_record",
    "decode_event",
    "decode_item",
    "encode",
    "get_schema",
    "load_schemas",
    "reload_schemas",
    "schema_dir",
    "validate",
]

KINDS: Final[tuple[str, ...]] = ("event", "item", "recommendation", "dead_letter", "join")
"""The message kinds; kind `k` is described by `schemas/<k>.schema.json`."""

SCHEMA_DIR_ENV: Final = "STREAM_RECO_SCHEMA_DIR"
"""Environment variable naming the schema folder: overrides both the installed copy and the checkout's."""

PACKAGED_SCHEMA_DIR: Final = "_schemas"
"""Folder inside the installed `stream_reco` package where a wheel carries the schemas (see pyproject.toml)."""

DRAFT_2020_12: Final = "https://json-schema.org/draft/2020-12/schema"

DEFAULT_MAX_BYTES: Final = 1_000_000
"""Largest message decoded by default: Kafka's default `message.max.bytes` is about 1 MB, and a real event or
item is well under 10 kB, so anything larger is a mistake or an attack and is rejected before parsing."""

DEAD_LETTER_RAW_CAP: Final = 65_536
"""Bytes of the original message kept in a dead-letter record (`raw`); the rest is cut and `raw_truncated` set,
so a 1 MB rejected payload does not become a 1 MB dead letter. Matches `raw`'s bound in dead_letter.schema.json."""

_MAX_REASON_CHARS: Final = 1_000
_MAX_FIELD_CHARS: Final = 256
_MAX_ERROR_CHARS: Final = 4_096  # dead_letter.schema.json: error.maxLength

# Keywords fastjsonschema does not implement (it would ignore them and accept what 2020-12 rejects), and
# `format`, which 2020-12 treats as an annotation while fastjsonschema asserts it.
_FAST_PATH_UNSUPPORTED: Final = frozenset(
    {
        "prefixItems",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
        "unevaluatedItems",
        "minContains",
        "maxContains",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$anchor",
        "format",
    }
)
# Keywords whose value maps names to subschemas (their keys are names, not keywords) or holds plain data.
_NAME_MAPS: Final = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_DATA_KEYWORDS: Final = frozenset({"enum", "const", "examples", "default", "description", "title", "$comment"})


class InvalidMessage(ValueError):
    """A message that does not satisfy the contract; the one error type the decoders raise.

    `reason` says what is wrong for a human; `field` is the failing field as a path (`event_id`,
    `context.quantity`, `items[0].score`), or None when the whole message is bad (too large, not JSON,
    not an object). Both go into the dead-letter record as `error` and `field`.
    """

    reason: str
    field: str | None

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = _clip(reason, _MAX_REASON_CHARS)
        self.field = None if field is None else _clip(field, _MAX_FIELD_CHARS)
        super().__init__(self.reason, self.field)

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def __repr__(self) -> str:
        return f"InvalidMessage(reason={self.reason!r}, field={self.field!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the exception picklable (multiprocessing, pytest-xdist) despite the custom __init__.
        return (type(self), (self.reason, self.field))


class SchemaLoadError(RuntimeError):
    """The schema folder is missing, or a schema file is unreadable or not a valid draft 2020-12 schema.

    A deployment problem, not a bad message: raised at load, it should stop a worker before it consumes.
    """


@dataclass(frozen=True, slots=True)
class _Registry:
    directory: Path
    schemas: Mapping[str, dict[str, Any]]  # private: handed out only as deep copies by get_schema()
    validators: Mapping[str, Callable[[Any], Any]]


_lock = threading.Lock()
_registry: _Registry | None = None


def schema_dir() -> Path:
    """The folder the schemas are read from, first match wins:

    1. `$STREAM_RECO_SCHEMA_DIR`, so a deployment can pin or patch the contract without rebuilding;
    2. the copy inside the installed package (a wheel install), found with importlib.resources. It comes
       before the checkout's folder because an installed package sits in site-packages, where a `schemas/`
       folder beside it would belong to some other distribution;
    3. the repository's `schemas/` beside the package (a source checkout or an editable install), so an
       edited schema takes effect without reinstalling. Returned even when missing, so the load error
       names the path it looked at.
    """
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    packaged = importlib.resources.files("stream_reco") / PACKAGED_SCHEMA_DIR
    # a Path for any unpacked install; a zip import would give a Traversable, which _load cannot read
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged.resolve()
    return Path(__file__).resolve().parent.parent / "schemas"


def load_schemas() -> Path:
    """Read, check and compile every schema now (once per process) and return the folder they came from.

    Call it at start-up so that a missing or broken schema stops the process before it consumes anything;
    otherwise the first validation loads them. Raises `SchemaLoadError`.
    """
    return _get_registry().directory


def reload_schemas() -> Path:
    """Forget the loaded schemas and load them again (after changing `$STREAM_RECO_SCHEMA_DIR`, in tests)."""
    global _registry
    with _lock:
        _registry = None
    return load_schemas()


def get_schema(kind: str) -> dict[str, Any]:
    """A copy of the schema of `kind` (for documentation, other validators, the benchmark)."""
    schema = _get_registry().schemas.get(kind)
    if schema is None:
        raise ValueError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    return copy.deepcopy(schema)


def validate(kind: str, doc: object) -> None:
    """Check an already-parsed document against the schema of `kind`; raise `InvalidMessage` if it fails.

    `kind` is one of `KINDS`; any other value is a programming error and raises a plain `ValueError`.
    """
    validator = _get_registry().validators.get(kind)
    if validator is None:
        raise ValueError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    _run(validator, doc)


def decode_event(raw: bytes | bytearray | memoryview | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Event:
    """Turn the bytes of a `shop.events` message into an `Event`, or raise `InvalidMessage` (and nothing else).

    Order: size (cheapest, and bounds the work of the rest), JSON, object, schema, record. The one other error
    is `SchemaLoadError` on the first call if the schema files themselves are broken: a deployment fault that
    should stop the worker, never caused by a message.
    """
    validator = _get_registry().validators["event"]
    doc = _parse_object(raw, max_bytes)
    _run(validator, doc)
    ctx = doc.get("context")
    if ctx:
        # The schema lets JSON say 2.0 for an integer and 499 for a number; give the record its declared types.
        quantity = ctx.get("quantity")
        price = ctx.get("price")
        position = ctx.get("position")
        if type(quantity) is float or type(price) is int or type(position) is float:
            ctx = dict(ctx)
            if type(quantity) is float:
                ctx["quantity"] = int(quantity)
            if type(price) is int:
                ctx["price"] = float(price)
            if type(position) is float:
                ctx["position"] = int(position)
            doc["context"] = ctx
    try:
        return Event.from_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # the schema should make this unreachable
        raise InvalidMessage(f"valid by the schema but not usable as an event: {exc!r}") from exc


def decode_item(raw: bytes | bytearray | memoryview | None, max_bytes: int = DEFAULT_MAX_BYTES) -> CatalogItem:
    """Turn the bytes of a `shop.catalog` message into a `CatalogItem`, or raise `InvalidMessage` only.

    A Kafka tombstone (no value) is rejected here as not a message; the caller, which has the key, may choose
    to treat it as a deletion of that item.
    """
    validator = _get_registry().validators["item"]
    doc = _parse_object(raw, max_bytes)
    _run(validator, doc)
    if type(doc.get("price")) is int:
        doc["price"] = float(doc["price"])
    attributes = doc.get("attributes")
    if attributes and any(type(v) is bool for v in attributes.values()):
        # CatalogItem keeps attribute values as text; spell booleans as JSON does, not as Python's str() does.
        doc["attributes"] = {k: ("true" if v else "false") if type(v) is bool else v for k, v in attributes.items()}
    try:
        return CatalogItem.from_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # the schema should make this unreachable
        raise InvalidMessage(f"valid by the schema but not usable as an item: {exc!r}") from exc


def dead_letter_record(
    raw: bytes | bytearray | memoryview | None,
    error: InvalidMessage | str,
    topic: str,
    partition: int,
    offset: int,
    received_at: int,
) -> dict[str, Any]:
    """Build the `reco.dead-letter` value for a rejected message (see dead_letter.schema.json).

    `raw` is kept as UTF-8 text when the whole message decodes as UTF-8 (readable in any console), as base64
    otherwise, and cut after `DEAD_LETTER_RAW_CAP` bytes; `raw_size` keeps the original size. A cut never
    splits a UTF-8 character. Partition and offset are -1 for a message that did not come from Kafka.
    """
    data = b"" if raw is None else bytes(raw)
    kept = data[:DEAD_LETTER_RAW_CAP]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    else:
        # The whole is valid UTF-8, so "ignore" can only drop a character split by the cut at the end.
        text, encoding = kept.decode("utf-8", "ignore"), "utf-8"
    if isinstance(error, InvalidMessage):
        reason, field = str(error), error.field
    else:
        reason, field = str(error), None
    return {
        "error": _clip(reason, _MAX_ERROR_CHARS) or "rejected",
        "field": field,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "raw": text,
        "raw_encoding": encoding,
        "raw_size": len(data),
        "raw_truncated": len(data) > DEAD_LETTER_RAW_CAP,
        "received_at": received_at,
    }


def encode(doc: Mapping[str, Any]) -> bytes:
    """Serialise a message value with orjson (compact UTF-8; numpy scalars and arrays allowed)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


# --- internals ---------------------------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_object(raw: bytes | bytearray | memoryview | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise InvalidMessage("message has no value (a tombstone)")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidMessage(f"message value must be bytes, got {type(raw).__name__}")
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size > max_bytes:
        raise InvalidMessage(f"message is {size} bytes, larger than the limit of {max_bytes} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also bad UTF-8, NaN/Infinity, numbers beyond a double, depth > 1024
        raise InvalidMessage(f"not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise InvalidMessage(f"message must be a JSON object, got {_json_type(doc)}")
    return doc


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _run(validator: Callable[[Any], Any], doc: object) -> None:
    try:
        validator(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _invalid_from(exc) from None


def _invalid_from(exc: fastjsonschema.JsonSchemaValueException) -> InvalidMessage:
    """Translate fastjsonschema's error (`data.context.quantity must be ...`) into a field path and a reason."""
    name = exc.name or "data"
    path = name[len("data") :].lstrip(".") if name.startswith("data") else name
    message = exc.message
    reason = message[len(name) :].strip() if message.startswith(name) else message
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    field = path or None
    if exc.rule == "required" and isinstance(exc.value, dict):
        missing = [key for key in definition.get("required", ()) if key not in exc.value]
        if missing:
            field = f"{path}.{missing[0]}" if path else missing[0]
            reason = "is required"
    elif exc.rule == "propertyNames" and isinstance(exc.value, dict):
        rule = definition.get("propertyNames")
        limits = rule if isinstance(rule, dict) else {}
        low, high = limits.get("minLength", 0), limits.get("maxLength")
        bad = next((k for k in exc.value if len(k) < low or (high is not None and len(k) > high)), None)
        if bad is not None:
            shown = _clip(bad, 40)
            bounds = f"{low} to {high}" if high is not None else f"at least {low}"
            reason = f"property name {shown!r} ({len(bad)} characters) must be {bounds} characters long"
    # A schema may explain a rule to producers in a `$comment` beside it; pass that on.
    why = definition.get("$comment")
    return InvalidMessage(f"{reason or message} ({why})" if why else reason or message, field)


def _get_registry() -> _Registry:
    global _registry
    registry = _registry
    if registry is None:
        with _lock:
            if _registry is None:
                _registry = _load(schema_dir())
            registry = _registry
    return registry


def _load(directory: Path) -> _Registry:
    if not directory.is_dir():
        raise SchemaLoadError(
            f"schema folder {directory} not found; set {SCHEMA_DIR_ENV} to the folder holding <kind>.schema.json"
        )
    schemas: dict[str, dict[str, Any]] = {}
    validators: dict[str, Callable[[Any], Any]] = {}
    for kind in KINDS:
        path = directory / f"{kind}.schema.json"
        try:
            schema = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SchemaLoadError(f"cannot read schema {path}: {exc}") from exc
        if not isinstance(schema, dict):
            raise SchemaLoadError(f"schema {path} is not a JSON object")
        if schema.get("$schema") != DRAFT_2020_12:
            raise SchemaLoadError(f'schema {path} must declare "$schema": "{DRAFT_2020_12}"')
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise SchemaLoadError(f"schema {path} is not a valid draft 2020-12 schema: {exc.message}") from exc
        unsupported = _unsupported_keywords(schema)
        if unsupported:
            raise SchemaLoadError(
                f"schema {path} uses {', '.join(sorted(unsupported))}, which the compiled validator would ignore"
            )
        try:
            validators[kind] = fastjsonschema.compile(
                schema,
                handlers={"http": _no_remote, "https": _no_remote, "file": _no_remote},
                use_default=False,  # never let validation write defaults into the message
                use_formats=False,  # `format` is an annotation in 2020-12 (and refused above)
            )
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            raise SchemaLoadError(f"cannot compile schema {path}: {exc}") from exc
        schemas[kind] = schema
    return _Registry(directory=directory, schemas=MappingProxyType(schemas), validators=MappingProxyType(validators))


def _no_remote(uri: str) -> Any:
    raise SchemaLoadError(f"schemas must be self-contained; refusing to fetch {uri}")


def _unsupported_keywords(node: object) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        found |= _FAST_PATH_UNSUPPORTED & node.keys()
        for key, value in node.items():
            if key in _DATA_KEYWORDS:
                continue
            if key in _NAME_MAPS and isinstance(value, dict):
                for sub in value.values():
                    found |= _unsupported_keywords(sub)
            else:
                found |= _unsupported_keywords(value)
    elif isinstance(node, list):
        for item in node:
            found |= _unsupported_keywords(item)
    return found
