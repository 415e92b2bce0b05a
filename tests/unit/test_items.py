"""The item catalog's metadata and vectors: content vectors, projection of new items, model loading."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_reco.core.content import (
    ContentEncoder,
    FeatureProjector,
    hashed_vector,
    item_features,
    price_band,
)
from stream_reco.core.events import CatalogItem
from stream_reco.core.items import CONTENT_ONLY, CatalogError, ItemCatalog
from stream_reco.model.artifact import ModelArtifact
from stream_reco.settings import Settings

DIM = 64
SETTINGS = Settings(exact_index_max_items=10_000_000)
TOPS = ("Home", "Electronics", "Garden")
LEAVES = ("A", "B", "C")


def shop(n_per_leaf: int = 8) -> list[CatalogItem]:
    """Items in three top-level categories of two levels below each, with prices and brands."""
    items = []
    for t, top in enumerate(TOPS):
        for mid, leaf in itertools.product(("X", "Y"), LEAVES):
            for j in range(n_per_leaf):
                items.append(
                    CatalogItem(
                        item_id=f"{top}-{mid}{leaf}-{j}",
                        title="",
                        category=(top, mid, leaf),
                        price=float(5 + 37 * j % 300),
                        attributes={"brand": f"brand{(j + t) % 4}", "colour": ("red", "blue")[j % 2]},
                    )
                )
    return items


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------- content vectors
def test_content_vectors_cluster_by_category() -> None:
    enc = ContentEncoder(DIM, seed=42)
    items = shop()
    vec = {i.item_id: enc.encode(i) for i in items}
    same_leaf, sibling_leaf, other_top = [], [], []
    for a, b in itertools.combinations(items, 2):
        c = cos(vec[a.item_id], vec[b.item_id])
        if a.category == b.category:
            same_leaf.append(c)
        elif a.category[:2] == b.category[:2]:
            sibling_leaf.append(c)
        elif a.category[0] != b.category[0]:
            other_top.append(c)
    # every same-leaf pair is closer than every pair from different top-level categories
    assert min(same_leaf) > max(other_top)
    assert np.mean(same_leaf) > np.mean(sibling_leaf) > np.mean(other_top)


def test_content_vectors_are_deterministic_and_seeded() -> None:
    item = shop()[3]
    a = ContentEncoder(DIM, seed=42).encode(item)
    b = ContentEncoder(DIM, seed=42).encode(item)
    c = ContentEncoder(DIM, seed=43).encode(item)
    np.testing.assert_array_equal(a, b)
    assert cos(a, c) < 0.9
    np.testing.assert_array_equal(hashed_vector("cat:Home", DIM, 1), hashed_vector("cat:Home", DIM, 1))
    assert a.dtype == np.float32 and a.shape == (DIM,)


def test_item_features() -> None:
    item = CatalogItem("x", category=("Home", "Kitchen"), price=30.0, attributes={"Brand": " Acme "})
    names = [n for n, _ in item_features(item)]
    assert names == ["cat:Home", "cat:Home/Kitchen", "price:4", "attr:brand=acme"]
    weights = [w for _, w in item_features(item)]
    assert weights[1] > weights[0]  # the leaf weighs more than its parent
    assert item_features(CatalogItem("bare")) == ()


@pytest.mark.parametrize(
    ("price", "band"),
    [(None, None), (0.0, "free"), (-1.0, "free"), (1.0, "0"), (31.9, "4"), (32.0, "5"), (float("nan"), None)],
)
def test_price_band(price: float | None, band: str | None) -> None:
    assert price_band(price) == band


catalog_items = st.builds(
    CatalogItem,
    item_id=st.text(min_size=1, max_size=20),
    category=st.lists(st.text(max_size=12), max_size=4).map(tuple),
    price=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    in_stock=st.booleans(),
    attributes=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
    deleted=st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(catalog_items, min_size=1, max_size=8))
def test_vectors_are_finite_and_unit_norm(items: list[CatalogItem]) -> None:
    cat = ItemCatalog(SETTINGS)
    for item in items:
        cat.upsert(item)
    for item in items:
        v = cat.vector(item.item_id)
        assert v is not None and v.dtype == np.float32 and v.shape == (DIM,)
        assert np.all(np.isfinite(v))
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    matrix = cat.vectors([i.item_id for i in items])
    assert np.all(np.isfinite(matrix))
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(catalog_items, min_size=1, max_size=6),
    trained=st.lists(st.lists(st.floats(-1e30, 1e30), min_size=DIM, max_size=DIM), min_size=1, max_size=4),
)
def test_projected_vectors_are_finite_and_unit_norm(items: list[CatalogItem], trained: list[list[float]]) -> None:
    vectors = np.asarray(trained, dtype=np.float64)
    vectors[np.linalg.norm(vectors, axis=1) == 0, 0] = 1.0
    ids = [f"trained-{i}" for i in range(len(vectors))]
    catalog = [CatalogItem(i, category=items[0].category, attributes=items[0].attributes) for i in ids]
    cat = ItemCatalog(SETTINGS)
    cat.load_model(ModelArtifact("m", ids, (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)), catalog))
    for item in items:
        cat.upsert(item)
        v = cat.vector(item.item_id)
        assert v is not None and np.all(np.isfinite(v))
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------- metadata
def test_metadata_accessors() -> None:
    cat = ItemCatalog(SETTINGS)
    assert len(cat) == 0 and cat.model_version == CONTENT_ONLY
    items = shop(2)
    for item in items:
        cat.upsert(item)
    assert len(cat) == len(items)
    first = items[0]
    assert first.item_id in cat and 42 not in cat
    assert cat.get(first.item_id) == first
    assert cat.category_of(first.item_id) == first.category
    assert cat.is_recommendable(first.item_id)
    assert {i.item_id for i in cat.items()} == {i.item_id for i in items}
    cat.upsert(CatalogItem(first.item_id, category=first.category, deleted=True))
    assert first.item_id in cat and not cat.is_recommendable(first.item_id)
    assert cat.get(first.item_id).deleted  # type: ignore[union-attr]


def test_vector_is_a_copy_and_vectors_has_shape() -> None:
    cat = ItemCatalog(SETTINGS)
    cat.upsert(CatalogItem("a", category=("x",)))
    v = cat.vector("a")
    assert v is not None
    v[:] = 0
    assert np.linalg.norm(cat.vector("a")) == pytest.approx(1.0)  # type: ignore[arg-type]
    m = cat.vectors(["a", "missing", "a"])
    assert m.shape == (3, DIM) and m.dtype == np.float32
    assert not m[1].any() and np.array_equal(m[0], m[2])
    assert cat.vectors([]).shape == (0, DIM)


def test_price_change_within_band_keeps_the_vector_and_category_change_moves_it() -> None:
    cat = ItemCatalog(SETTINGS)
    cat.upsert(CatalogItem("a", category=("Home", "Kitchen"), price=20.0))
    before = cat.vector("a")
    cat.upsert(CatalogItem("a", category=("Home", "Kitchen"), price=21.0))
    np.testing.assert_array_equal(cat.vector("a"), before)
    cat.upsert(CatalogItem("a", category=("Garden", "Tools"), price=21.0))
    assert cos(cat.vector("a"), before) < 0.5  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- trained model and new items
def trained_shop(seed: int = 1) -> tuple[ModelArtifact, list[CatalogItem], dict[tuple[str, ...], np.ndarray]]:
    """A model whose trained vectors cluster per leaf category, in directions unrelated to content hashes."""
    rng = np.random.default_rng(seed)
    items = shop()
    centres = {cat: rng.standard_normal(DIM) for cat in {i.category for i in items}}
    x = np.stack([centres[i.category] + 0.3 * rng.standard_normal(DIM) for i in items])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    art = ModelArtifact("2026-01-01T00-00-00Z-test", [i.item_id for i in items], x.astype(np.float32), items)
    return art, items, centres


def test_new_items_are_projected_among_their_trained_peers() -> None:
    art, items, centres = trained_shop()
    cat = ItemCatalog(SETTINGS)
    cat.load_model(art)
    assert cat.model_version == art.version
    new = CatalogItem("new-phone", category=("Electronics", "Y", "B"), price=40.0, attributes={"brand": "brand1"})
    cat.upsert(new)
    v = cat.vector("new-phone")
    assert v is not None
    peers = [i.item_id for i in items if i.category == new.category]
    peer_cos = [cos(cat.vector(i), centres[new.category]) for i in peers]  # type: ignore[arg-type]
    # placed like a typical peer: close to the leaf's centre, yet not closer than every trained peer
    assert 0.7 < cos(v, centres[new.category]) < max(peer_cos)
    neighbours = cat.search(v, 9, exclude={"new-phone"})
    assert all(cat.category_of(i) == new.category for i, _ in neighbours[:8])
    # a visitor who looked at that leaf's items is offered the new item before anyone touched it,
    # among the leaf's items, not ahead of all of them
    interest = cat.vectors(peers[:4]).mean(axis=0)
    ranked = [i for i, _ in cat.search(interest, len(peers) + 1)]
    assert "new-phone" in ranked and ranked[0] != "new-phone"


def test_new_item_arriving_before_its_peers_metadata_is_reprojected() -> None:
    art, items, centres = trained_shop()
    bare = ModelArtifact(art.version, art.item_ids, art.vectors, catalog=[])  # model without catalog snapshot
    cat = ItemCatalog(SETTINGS)
    cat.load_model(bare)
    early = CatalogItem("early", category=("Garden", "X", "C"))
    cat.upsert(early)  # no trained item described yet: content vector fallback
    assert cos(cat.vector("early"), centres[early.category]) < 0.5  # type: ignore[arg-type]
    for item in items:  # the catalog topic catches up
        cat.upsert(item)
    assert cos(cat.vector("early"), centres[early.category]) > 0.7  # type: ignore[arg-type]


def test_trained_items_without_metadata_have_vectors_but_are_not_recommended() -> None:
    art, items, _ = trained_shop()
    described = items[: len(items) // 2]
    cat = ItemCatalog(SETTINGS)
    cat.load_model(ModelArtifact(art.version, art.item_ids, art.vectors, catalog=described))
    undescribed = items[-1].item_id
    assert cat.vector(undescribed) is not None
    assert not cat.is_recommendable(undescribed) and cat.get(undescribed) is None
    returned = {i for i, _ in cat.search(cat.vector(undescribed), len(items))}  # type: ignore[arg-type]
    assert returned == {i.item_id for i in described}
    cat.upsert(items[-1])  # described later: recommendable from now on
    assert cat.search(cat.vector(undescribed), 1)[0][0] == undescribed  # type: ignore[arg-type]


def test_trained_vector_wins_over_content_and_live_metadata_wins_over_the_snapshot() -> None:
    art, items, _ = trained_shop()
    cat = ItemCatalog(SETTINGS)
    live = CatalogItem(items[0].item_id, category=items[0].category, in_stock=False, updated_at=10)
    cat.upsert(live)
    stale = CatalogItem(items[1].item_id, category=("Old",), updated_at=1)
    cat.upsert(stale)
    snapshot = list(items)
    snapshot[0] = CatalogItem(items[0].item_id, category=items[0].category, updated_at=50)
    snapshot[1] = CatalogItem(items[1].item_id, category=items[1].category, updated_at=5)
    cat.load_model(ModelArtifact(art.version, art.item_ids, art.vectors, catalog=snapshot))
    np.testing.assert_allclose(cat.vector(items[0].item_id), art.vectors[0], atol=1e-6)
    assert not cat.is_recommendable(items[0].item_id)  # the live message won over a newer snapshot row
    assert cat.category_of(items[1].item_id) == ("Old",)  # the live topic wins, whatever updated_at says
    assert cat.category_of(items[2].item_id) == items[2].category  # never mentioned live: the snapshot fills in


def hidden_after_load(cat: ItemCatalog, item_id: str, vector: np.ndarray) -> bool:
    """The item is neither recommendable nor returned by a search aimed straight at its vector."""
    found = {i for i, _ in cat.search(vector, len(cat) + 1)}
    return not cat.is_recommendable(item_id) and item_id not in found


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"in_stock": False}, id="out-of-stock"),
        pytest.param({"deleted": True}, id="deleted"),
    ],
)
def test_stock_only_updates_and_tombstones_survive_model_load(update: dict[str, bool]) -> None:
    """Defect 2 (issue 11): stock-only updates and tombstones carry updated_at 0; an artifact row with a
    newer updated_at must not bring the item back when the model loads after the catalog topic."""
    art, items, _ = trained_shop()
    target = items[5]
    snapshot = [CatalogItem(i.item_id, category=i.category, price=i.price, updated_at=1_764_150_000_000)
                for i in items]
    cat = ItemCatalog(SETTINGS)
    for item in items:  # the catalog topic: the full items, then the stock change / deletion
        cat.upsert(item)
    cat.upsert(CatalogItem(target.item_id, updated_at=0, **update))
    cat.load_model(ModelArtifact(art.version, art.item_ids, art.vectors, catalog=snapshot))
    assert hidden_after_load(cat, target.item_id, art.vectors[5])
    # hot swap: a second, newer model with the same stale snapshot row
    newer = [CatalogItem(i.item_id, category=i.category, updated_at=1_800_000_000_000) for i in items]
    cat.load_model(ModelArtifact(art.version + "-2", art.item_ids, art.vectors, catalog=newer))
    assert cat.model_version == art.version + "-2"
    assert hidden_after_load(cat, target.item_id, art.vectors[5])
    # a later live message restocks it: recommendable again, from the model's vector
    cat.upsert(CatalogItem(target.item_id, category=target.category, updated_at=0))
    assert cat.is_recommendable(target.item_id)
    assert cat.search(art.vectors[5], 1)[0][0] == target.item_id


def test_snapshot_rows_of_items_never_mentioned_live_follow_the_newest_model() -> None:
    """Metadata that came only from a model is replaced by the next model's copy (it is not live)."""
    art, items, _ = trained_shop()
    cat = ItemCatalog(SETTINGS)
    cat.load_model(ModelArtifact(art.version, art.item_ids, art.vectors, catalog=items))
    assert cat.is_recommendable(items[3].item_id)
    gone = [CatalogItem(i.item_id, category=i.category, in_stock=i.item_id != items[3].item_id) for i in items]
    cat.load_model(ModelArtifact(art.version + "-2", art.item_ids, art.vectors, catalog=gone))
    assert not cat.is_recommendable(items[3].item_id)


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (["a", "b"], np.ones((2, DIM + 1)), "shape"),
        (["a"], np.ones((2, DIM)), "one to one"),
        (["a", "a"], np.ones((2, DIM)), "one to one"),
        (["a", "b"], np.vstack([np.ones(DIM), np.zeros(DIM)]), "zero or not finite"),
        (["a", "b"], np.vstack([np.ones(DIM), np.full(DIM, np.inf)]), "zero or not finite"),
    ],
)
def test_unusable_models_are_rejected_and_the_old_one_keeps_serving(
    ids: list[str], vectors: np.ndarray, message: str
) -> None:
    art, _, _ = trained_shop()
    cat = ItemCatalog(SETTINGS)
    cat.load_model(art)
    with pytest.raises(CatalogError, match=message):
        cat.load_model(ModelArtifact("broken", ids, vectors.astype(np.float32)))
    assert cat.model_version == art.version
    assert cat.search(art.vectors[0], 1)[0][0] == art.item_ids[0]


def test_projector_add_remove_round_trip() -> None:
    enc = ContentEncoder(DIM, 0)
    proj = FeatureProjector(DIM, enc)
    feats = (("cat:A", 1.0), ("attr:b=c", 0.5))
    v = hashed_vector("x", DIM, 0)
    assert proj.add(feats, v) == ["cat:A", "attr:b=c"]  # first centroid
    assert proj.add(feats, v) == ["cat:A", "attr:b=c"]  # count 2: refined
    assert proj.add(feats, v) == []  # count 3: not worth re-projecting for
    proj.remove(feats, v)
    assert proj.count("cat:A") == 2 and proj.knows("attr:b=c")
    # two identical members: shrunk mean length 2/3, so a new item sits at cosine 2/3 from them
    assert cos(proj.project("i", feats), v) == pytest.approx(2 / 3, abs=1e-5)  # type: ignore[arg-type]
    proj.remove(feats, v)
    proj.remove(feats, v)
    assert len(proj) == 0 and proj.project("i", feats) is None
