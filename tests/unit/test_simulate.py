"""The simulated shop: deterministic, valid by the contract, and structured so personalisation has signal."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from stream_reco import schemas
from stream_reco.cli import cli
from stream_reco.shop.simulate import (
    CATALOG_FILE,
    EVENTS_FILE,
    MANIFEST_FILE,
    SIZES,
    UPDATES_FILE,
    ShopSimulator,
    simulate,
    write_shop,
)

FILES = (CATALOG_FILE, EVENTS_FILE, UPDATES_FILE, MANIFEST_FILE)


@pytest.fixture(scope="module")
def tiny() -> tuple[ShopSimulator, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    sim = ShopSimulator("tiny", seed=11)
    return sim, list(sim.catalog()), list(sim.events()), list(sim.catalog_updates())


def _read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    a = write_shop(tmp_path / "a", "tiny", seed=5)
    b = write_shop(tmp_path / "b", "tiny", seed=5)
    c = write_shop(tmp_path / "c", "tiny", seed=6)
    for name in FILES:
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name
    assert (a.events_path).read_bytes() != (c.events_path).read_bytes()
    assert (a.catalog_path).read_bytes() != (c.catalog_path).read_bytes()
    assert not list(tmp_path.glob("*/*.tmp"))  # written under temporary names, then renamed


def test_python_api_matches_the_files(tmp_path: Path) -> None:
    result = write_shop(tmp_path, "tiny", seed=3)
    catalog, events = simulate("tiny", seed=3)
    assert catalog == _read(result.catalog_path)
    assert list(events) == _read(result.events_path)
    manifest = orjson.loads((tmp_path / MANIFEST_FILE).read_bytes())
    assert manifest["counts"]["events"] == result.events
    assert manifest["counts"]["items"] == result.items == SIZES["tiny"].items


def test_every_document_validates(tiny: Any) -> None:
    _, catalog, events, updates = tiny
    for doc in catalog + updates:
        schemas.validate("item", doc)
    for doc in events:
        schemas.validate("event", doc)
        schemas.decode_event(orjson.dumps(doc))  # and becomes a typed record


def test_tiny_size_and_ordering(tiny: Any) -> None:
    _, catalog, events, updates = tiny
    assert len(catalog) == SIZES["tiny"].items
    assert 1_200 <= len(events) <= 3_200
    assert len({e["event_id"] for e in events}) == len(events)
    times = [e["timestamp"] for e in events]
    assert times == sorted(times)
    assert [u["updated_at"] for u in updates] == sorted(u["updated_at"] for u in updates)
    assert {e["item_id"] for e in events} <= {i["item_id"] for i in catalog}
    assert all(len(i["category"]) == 3 for i in catalog)
    assert len({i["item_id"] for i in catalog}) == len(catalog)


def test_small_size() -> None:
    catalog, events = simulate("small", seed=1)
    n = sum(1 for _ in events)
    assert len(catalog) == SIZES["small"].items
    assert 24_000 <= n <= 36_000


def test_medium_builds_quickly_and_streams_lazily() -> None:
    sim = ShopSimulator("medium", seed=1)
    first = list(itertools.islice(sim.events(), 200))
    assert len(first) == 200 and sim.spec.visitors == 100_000
    assert sim.n_sessions > sim.spec.visitors
    assert len(set(sim.leaf_path)) == sim.n_leaves == SIZES["medium"].leaves  # readable, unique leaf names


@pytest.mark.slow
def test_large_streams_without_materialising(tmp_path: Path) -> None:
    sim = ShopSimulator("large", seed=1)
    assert sim.spec.items == sim.spec.visitors == 1_000_000
    assert len(list(itertools.islice(sim.events(), 1_000))) == 1_000


def test_all_behaviours_present(tiny: Any) -> None:
    _, _, events, _ = tiny
    kinds = Counter(e["event_type"] for e in events)
    assert kinds["view"] > kinds["add_to_cart"] > kinds["purchase"] > 0
    assert kinds["dismiss"] > 0
    assert all(e["context"]["reason"] for e in events if e["event_type"] == "dismiss")
    assert all(e["context"]["quantity"] >= 1 and e["context"]["price"] > 0
               for e in events if e["event_type"] in ("purchase", "add_to_cart"))
    assert any("page_category" in (e.get("context") or {}) for e in events)
    assert any("user_id" not in e for e in events)  # anonymous visitors


def test_anonymous_visitors_log_in_with_their_session(tiny: Any) -> None:
    _, _, events, _ = tiny
    anonymous_sessions: set[str] = set()
    joins = 0
    for e in events:
        if "user_id" not in e:
            anonymous_sessions.add(e["session_id"])
        elif e["session_id"] in anonymous_sessions:
            joins += 1
    assert joins > 0


def test_purchases_follow_carts_in_the_session(tiny: Any) -> None:
    _, _, events, _ = tiny
    carted: set[tuple[str, str]] = set()
    for e in events:
        if e["event_type"] == "add_to_cart":
            carted.add((e["session_id"], e["item_id"]))
        if e["event_type"] == "purchase":
            assert (e["session_id"], e["item_id"]) in carted


def test_stock_changes_are_respected(tiny: Any) -> None:
    """No cart or purchase of an item while it is out of stock, nothing at all after its deletion."""
    _, _, events, updates = tiny
    assert updates, "tiny shop has stock changes"
    changes: dict[str, list[tuple[int, bool, bool]]] = defaultdict(list)
    for u in updates:
        changes[u["item_id"]].append((u["updated_at"], u["in_stock"], u["deleted"]))

    def state(item: str, t: int) -> tuple[bool, bool]:
        in_stock, deleted = True, False
        for when, s, d in changes.get(item, []):
            if when <= t:
                in_stock, deleted = s, d
        return in_stock, deleted

    for e in events:
        in_stock, deleted = state(e["item_id"], e["timestamp"])
        assert not deleted
        if e["event_type"] in ("add_to_cart", "purchase"):
            assert in_stock, e


def test_visitors_browse_within_their_tastes(tiny: Any) -> None:
    """Personal signal: most views are in a visitor's taste leaves or their siblings, far above chance."""
    sim, catalog, events, _ = tiny
    leaf_of = {i["item_id"]: "/".join(i["category"]) for i in catalog}
    in_taste = total = 0
    for e in events:
        if e["event_type"] != "view" or "user_id" not in e:
            continue
        v = int(e["user_id"].split("-")[1])
        taste_mids = {int(sim.leaf_mid[lf]) for lf in sim.v_tastes[v] if lf >= 0}
        leaf = sim.leaf_path.index(leaf_of[e["item_id"]])
        in_taste += int(sim.leaf_mid[leaf]) in taste_mids
        total += 1
    assert total > 300
    assert in_taste / total > 0.75


def test_co_viewed_items_cluster(tiny: Any) -> None:
    """Consecutive views of a visitor mostly stay in one leaf: co-visitation has signal popularity lacks."""
    _, catalog, events, _ = tiny
    leaf_of = {i["item_id"]: tuple(i["category"]) for i in catalog}
    last: dict[str, str] = {}
    same = pairs = 0
    for e in events:
        if e["event_type"] != "view":
            continue
        prev = last.get(e["session_id"])
        if prev is not None:
            pairs += 1
            same += leaf_of[prev] == leaf_of[e["item_id"]]
        last[e["session_id"]] = e["item_id"]
    n_leaves = len(set(leaf_of.values()))
    assert same / pairs > 0.6 > 3 / n_leaves


def test_cli_writes_the_shop(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--out", str(tmp_path / "shop"), "--size", "tiny", "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert "items" in result.output and "events" in result.output
    for name in FILES:
        assert (tmp_path / "shop" / name).stat().st_size > 0


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown size"):
        ShopSimulator("huge")
    result = CliRunner().invoke(cli, ["simulate", "--out", "x", "--size", "huge"])
    assert result.exit_code == 2
