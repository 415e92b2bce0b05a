"""Cost per event of decoding and validating `shop.events` messages: fastjsonschema vs jsonschema.

Why this exists: every event passes the edge validation before the recommender sees it, so its cost is paid
per message on the hot path. This measures, on a realistic mix of events (mostly views, a third anonymous,
about 1% invalid), the median cost per event of:

- `orjson_parse`: orjson.loads alone (the floor);
- `fastjsonschema`: orjson.loads + the compiled validator `stream_reco.schemas` uses;
- `jsonschema`: orjson.loads + jsonschema's Draft202012Validator on the same schema file;
- `decode_event`: the whole production path (size check, parse, validate, typed `Event`);
- `decode_event_invalid_only`: the same on invalid messages alone (the dead-letter path builds an error).

Usage: `.venv/bin/python bench/validator_cost.py --output FILE [--events N] [--repeats R] [--quick]`.
Writes a JSON result and prints a table; the target is tens of microseconds at most per event.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from stream_reco import schemas

# the four behaviour types of the original mix (feedback events are measured elsewhere)
EVENT_TYPES = ("view", "add_to_cart", "purchase", "dismiss")

TARGET_US_PER_EVENT = 50.0
T0 = 1_764_150_000_000
CATEGORIES = (
    "Furniture/Living room/Sofas",
    "Furniture/Bedroom/Beds",
    "Kitchen/Cookware/Pans",
    "Home/Cleaning/Detergents",
    "Garden/Tools",
)


def make_events(n: int, invalid_share: float, seed: int) -> list[bytes]:
    """`n` encoded events shaped like a shop's traffic; about `invalid_share` of them break one rule."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(n):
        event_type = rng.choices(EVENT_TYPES, weights=(80, 12, 3, 5))[0]
        doc: dict[str, Any] = {
            "event_id": f"e-{seed}-{i:08d}-{rng.getrandbits(32):08x}",
            "event_type": event_type,
            "item_id": f"sku-{rng.randrange(50_000)}",
            "timestamp": T0 + i * 37 + rng.randrange(1000),
        }
        visitor = rng.random()
        if visitor < 0.35:
            doc["session_id"] = f"s-{rng.getrandbits(48):012x}"
            if rng.random() < 0.3:
                doc["user_id"] = None
        else:
            doc["user_id"] = f"u-{rng.randrange(200_000)}"
            if visitor > 0.95:  # login: joins the session to the user
                doc["session_id"] = f"s-{rng.getrandbits(48):012x}"
        context: dict[str, Any] = {}
        if rng.random() < 0.7:
            context["page_category"] = rng.choice(CATEGORIES)
        if event_type in ("add_to_cart", "purchase"):
            context["quantity"] = rng.choice((1, 1, 1, 2, 3))
            context["price"] = round(rng.uniform(2, 900), 2)
        if event_type == "dismiss":
            context["reason"] = "not_interested"
        if context:
            doc["context"] = context
        if rng.random() < invalid_share:
            out.append(_break(doc, rng))
        else:
            out.append(orjson.dumps(doc))
    return out


def _break(doc: dict[str, Any], rng: random.Random) -> bytes:
    """One of the mistakes producers make, chosen at random."""
    kind = rng.randrange(6)
    if kind == 0:
        doc.pop("user_id", None)
        doc.pop("session_id", None)
    elif kind == 1:
        doc.setdefault("context", {})["quantity"] = 0
    elif kind == 2:
        doc["event_type"] = "click"
    elif kind == 3:
        doc["timestamp"] = str(doc["timestamp"])
    elif kind == 4:
        doc["event_id"] = ""
    else:
        return orjson.dumps(doc)[:-7]  # cut short: not JSON
    return orjson.dumps(doc)


def _fast(raws: Sequence[bytes]) -> int:
    validate = schemas.validate
    bad = 0
    for raw in raws:
        try:
            validate("event", orjson.loads(raw))
        except (schemas.InvalidMessage, orjson.JSONDecodeError):
            bad += 1
    return bad


def _make_reference() -> Callable[[Sequence[bytes]], int]:
    validator = Draft202012Validator(schemas.get_schema("event"))

    def run(raws: Sequence[bytes]) -> int:
        bad = 0
        for raw in raws:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            error = next(validator.iter_errors(doc), None)  # what validator.validate() raises, minus the raise
            if error is not None:
                bad += 1
        return bad

    return run


def _parse(raws: Sequence[bytes]) -> int:
    loads = orjson.loads
    for raw in raws:
        with contextlib.suppress(orjson.JSONDecodeError):
            loads(raw)
    return 0


def _decode(raws: Sequence[bytes]) -> int:
    decode = schemas.decode_event
    bad = 0
    for raw in raws:
        try:
            decode(raw)
        except schemas.InvalidMessage:
            bad += 1
    return bad


def measure(fn: Callable[[Sequence[bytes]], int], raws: Sequence[bytes], repeats: int) -> dict[str, Any]:
    """Median over `repeats` passes of the cost per message, in microseconds (after one warm-up pass)."""
    rejected = fn(raws)
    runs: list[float] = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            fn(raws)
            elapsed = time.perf_counter_ns() - start
        finally:
            gc.enable()
        runs.append(elapsed / len(raws) / 1_000)
    return {
        "median_us_per_event": round(statistics.median(runs), 3),
        "min_us_per_event": round(min(runs), 3),
        "max_us_per_event": round(max(runs), 3),
        "runs_us_per_event": [round(r, 3) for r in runs],
        "messages": len(raws),
        "rejected": rejected,
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def run(events: int, repeats: int, invalid_share: float, seed: int) -> dict[str, Any]:
    schemas.load_schemas()
    raws = make_events(events, invalid_share, seed)
    invalid = make_events(max(1, events // 10), 1.0, seed + 1)
    results = {
        "orjson_parse": measure(_parse, raws, repeats),
        "fastjsonschema": measure(_fast, raws, repeats),
        "jsonschema": measure(_make_reference(), raws, repeats),
        "decode_event": measure(_decode, raws, repeats),
        "decode_event_invalid_only": measure(_decode, invalid, repeats),
    }
    fast = results["fastjsonschema"]["median_us_per_event"]
    slow = results["jsonschema"]["median_us_per_event"]
    hot = results["decode_event"]["median_us_per_event"]
    return {
        "benchmark": "validator_cost",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "orjson": _version("orjson"),
            "fastjsonschema": _version("fastjsonschema"),
            "jsonschema": _version("jsonschema"),
        },
        "config": {
            "events": events,
            "repeats": repeats,
            "invalid_share": invalid_share,
            "seed": seed,
            "mix": "views 80%, add_to_cart 12%, purchase 3%, dismiss 5%; 35% anonymous; 70% with page_category",
            "mean_message_bytes": round(sum(map(len, raws)) / len(raws), 1),
        },
        "unit": "microseconds per event (median over repeats)",
        "results": results,
        "validator_only_us_per_event": {
            "fastjsonschema": round(fast - results["orjson_parse"]["median_us_per_event"], 3),
            "jsonschema": round(slow - results["orjson_parse"]["median_us_per_event"], 3),
        },
        "speedup_fastjsonschema_vs_jsonschema": round(slow / fast, 1) if fast else None,
        "target_us_per_event": TARGET_US_PER_EVENT,
        "meets_target": hot <= TARGET_US_PER_EVENT,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, help="write the JSON result here (printed to stdout as well)")
    parser.add_argument("--events", type=int, default=20_000, help="events in the mix (default 20000)")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes; the median is reported (default 7)")
    parser.add_argument("--invalid-share", type=float, default=0.01, help="share of invalid events (default 0.01)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2000 events, 3 repeats: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeats = 2_000, 3
    if args.events < 1 or args.repeats < 1 or not 0 <= args.invalid_share <= 1:
        parser.error("--events and --repeats must be positive and --invalid-share within [0, 1]")
    result = run(args.events, args.repeats, args.invalid_share, args.seed)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(f"{'method':<28}{'median µs/event':>18}{'min':>10}{'rejected':>10}", file=sys.stderr)
    for name, r in result["results"].items():
        print(
            f"{name:<28}{r['median_us_per_event']:>18.2f}{r['min_us_per_event']:>10.2f}{r['rejected']:>10}",
            file=sys.stderr,
        )
    print(f"speed-up fastjsonschema vs jsonschema: x{result['speedup_fastjsonschema_vs_jsonschema']}", file=sys.stderr)
    if not args.output:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
