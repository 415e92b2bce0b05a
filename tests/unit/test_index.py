"""Search behaviour of the item catalog, one suite run against the exact and the annoy index.

The exact index is the oracle: every test that checks *which* items come back compares with a brute-force
numpy answer, and the annoy run must reach the recall target on clustered data like trained embeddings.
Small annoy catalogues are forced by `exact_index_max_items=0`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_reco.core.events import CatalogItem
from stream_reco.core.index import AnnoyIndex, ExactIndex, top_k
from stream_reco.core.items import CatalogError, ItemCatalog
from stream_reco.model.artifact import ModelArtifact, load, save
from stream_reco.settings import Settings

DIM = 64
N_ITEMS = 3000
N_CLUSTERS = 30
K = 20
RECALL_TARGET = 0.95
KINDS = ("exact", "annoy")


def settings_for(kind: str, **changes: object) -> Settings:
    # a small forest and search_k (300 of 3000 items visited) so the recall check is not trivially 1.0
    base = Settings(annoy_n_trees=10, annoy_search_k=300, delta_rebuild_items=100_000)
    forced = {"exact_index_max_items": 0} if kind == "annoy" else {"exact_index_max_items": 10_000_000}
    return base.replace(**{**forced, **changes})


def clustered(n: int = N_ITEMS, clusters: int = N_CLUSTERS, seed: int = 7) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Unit vectors drawn around random cluster centres (like trained embeddings) and their cluster ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + 0.6 * rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"item-{i:05d}" for i in range(n)]
    return ids, x.astype(np.float32), labels


def catalog_item(item_id: str, cluster: int, **kw: object) -> CatalogItem:
    return CatalogItem(item_id=item_id, title=item_id, category=("dept", f"c{cluster}"), price=10.0, **kw)  # type: ignore[arg-type]


def artifact(
    ids: list[str], x: np.ndarray, labels: np.ndarray, version: str = "v1", **overrides: CatalogItem
) -> ModelArtifact:
    catalog = [overrides.get(i) or catalog_item(i, int(c)) for i, c in zip(ids, labels, strict=True)]
    return ModelArtifact(version=version, item_ids=list(ids), vectors=x, catalog=catalog)


def build(kind: str, **changes: object) -> tuple[ItemCatalog, list[str], np.ndarray, np.ndarray]:
    ids, x, labels = clustered()
    cat = ItemCatalog(settings_for(kind, **changes))
    cat.load_model(artifact(ids, x, labels), background=False)
    assert cat.index_kind == kind
    return cat, ids, x, labels


def queries(x: np.ndarray, labels: np.ndarray, n: int = 100, seed: int = 3) -> np.ndarray:
    """Means of 3-5 items of one cluster (first half) or of two clusters (second half), like visitor vectors."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        picks = rng.integers(0, N_CLUSTERS, 1 if j < n // 2 else 2)
        members = np.flatnonzero(np.isin(labels, picks))
        out.append(x[rng.choice(members, int(rng.integers(3, 6)), replace=False)].mean(axis=0))
    return np.asarray(out, dtype=np.float32)


def brute_force(ids: list[str], x: np.ndarray, q: np.ndarray, k: int, allowed: set[str] | None = None) -> list[str]:
    scores = x @ (q / np.linalg.norm(q))
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order if allowed is None or ids[i] in allowed][:k]


@pytest.fixture(params=KINDS, scope="module")
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def loaded(kind: str) -> tuple[ItemCatalog, list[str], np.ndarray, np.ndarray]:
    """A read-only catalogue shared by tests that do not change it (builds annoy once per module)."""
    return build(kind)


# ---------------------------------------------------------------------------- correctness vs the oracle
def test_top_k_matches_exact_on_clustered_data(loaded, kind: str) -> None:
    cat, ids, x, labels = loaded
    hits = total = 0
    for q in queries(x, labels):
        got = [i for i, _ in cat.search(q, K)]
        want = brute_force(ids, x, q, K)
        assert len(got) == K
        hits += len(set(got) & set(want))
        total += K
        if kind == "exact":
            assert got == want
    assert hits / total >= RECALL_TARGET


def test_results_are_sorted_cosines_of_recommendable_items(loaded) -> None:
    cat, _, x, labels = loaded
    q = queries(x, labels, n=1)[0]
    res = cat.search(3.0 * q, K)  # scale does not matter
    scores = [s for _, s in res]
    assert scores == sorted(scores, reverse=True)
    for item_id, score in res:
        assert cat.is_recommendable(item_id)
        expected = float(cat.vector(item_id) @ (q / np.linalg.norm(q)))
        assert score == pytest.approx(expected, abs=1e-5)


def test_search_many_equals_search(loaded) -> None:
    cat, _, x, labels = loaded
    qs = queries(x, labels, n=20)
    many = cat.search_many(qs, K, exclude={"item-00001"})
    assert many == [cat.search(q, K, exclude={"item-00001"}) for q in qs]


def test_exclude_removes_items_and_still_fills_the_list(loaded) -> None:
    cat, _, x, _ = loaded
    q = x[0]
    first = [i for i, _ in cat.search(q, K)]
    excluded = set(first[:10]) | {"not-an-item"}
    second = [i for i, _ in cat.search(q, K, exclude=excluded)]
    assert len(second) == K
    assert not excluded & set(second)
    assert second[:10] == first[10:]


def test_k_beyond_catalogue_and_degenerate_queries(loaded) -> None:
    cat, ids, x, _ = loaded
    assert len(cat.search(x[0], len(ids) + 50)) == len(ids)
    assert cat.search(x[0], 0) == []
    assert cat.search(np.zeros(DIM, dtype=np.float32), K) == []
    assert cat.search(np.full(DIM, np.nan, dtype=np.float32), K) == []
    with pytest.raises(CatalogError):
        cat.search(np.ones(DIM + 1, dtype=np.float32), K)
    batch = np.stack([x[0], np.zeros(DIM, dtype=np.float32)])
    res = cat.search_many(batch, 3)
    assert len(res[0]) == 3 and res[1] == []


def test_unknown_items(loaded) -> None:
    cat, *_ = loaded
    assert cat.get("nope") is None
    assert cat.vector("nope") is None
    assert cat.category_of("nope") == ()
    assert not cat.is_recommendable("nope")
    assert "nope" not in cat
    v = cat.vectors(["nope", "item-00000"])
    assert v.shape == (2, DIM) and v.dtype == np.float32
    assert not v[0].any() and np.linalg.norm(v[1]) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------- live changes
def test_out_of_stock_and_deleted_items_disappear_at_once(kind: str) -> None:
    cat, ids, x, labels = build(kind)
    q = x[42]
    top = [i for i, _ in cat.search(q, K)]
    assert top[0] == ids[42]
    gone_stock, gone_deleted = top[0], top[1]
    cat.upsert(catalog_item(gone_stock, int(labels[42]), in_stock=False))
    cat.upsert(catalog_item(gone_deleted, 0, deleted=True))
    after = [i for i, _ in cat.search(q, K)]
    assert gone_stock not in after and gone_deleted not in after
    assert len(after) == K
    assert not cat.is_recommendable(gone_stock) and cat.get(gone_deleted).deleted  # type: ignore[union-attr]
    assert cat.vector(gone_stock) is not None  # still known: visitors' history keeps its direction
    cat.upsert(catalog_item(gone_stock, int(labels[42])))  # back in stock: back in the results
    assert cat.search(q, 1)[0][0] == gone_stock


def test_item_upserted_after_build_is_found_at_once(kind: str) -> None:
    cat, ids, x, labels = build(kind)
    cluster = int(labels[0])
    new = catalog_item("brand-new", cluster)
    cat.upsert(new)
    if kind == "annoy":
        assert cat.delta_size == 1  # served by the exact delta until the next rebuild
    v = cat.vector("brand-new")
    assert v is not None
    assert cat.search(v, 1)[0][0] == "brand-new"
    # projected among its cluster: its nearest trained items are mostly from the same cluster
    near = [i for i, _ in cat.search(v, 11, exclude={"brand-new"})]
    same = sum(int(labels[ids.index(i)]) == cluster for i in near)
    assert same >= 8
    # a visitor interested in that cluster is offered it like a typical member: within the cluster's
    # block of results, neither above all established members nor below them
    size = int((labels == cluster).sum())
    ranked = [i for i, _ in cat.search(x[labels == cluster].mean(axis=0), size + 1)]
    assert "brand-new" in ranked
    assert 0 < ranked.index("brand-new") < size


def test_rebuild_swaps_atomically_and_keeps_results(kind: str) -> None:
    cat, _, x, labels = build(kind)
    for j in range(30):
        cat.upsert(catalog_item(f"new-{j:02d}", j % N_CLUSTERS))
    qs = queries(x, labels, n=30)
    before = cat.search_many(qs, K)
    cat.rebuild()
    assert cat.delta_size == 0
    assert cat.index_kind == kind
    after = cat.search_many(qs, K)
    overlap = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / K for a, b in zip(before, after, strict=True)])
    assert overlap >= (1.0 if kind == "exact" else RECALL_TARGET)
    found = [cat.search(cat.vector(f"new-{j:02d}"), 1)[0][0] for j in range(30)]
    assert found == [f"new-{j:02d}" for j in range(30)]


def test_delta_growth_triggers_a_background_rebuild(kind: str) -> None:
    cat, *_ = build(kind, delta_rebuild_items=10)
    for j in range(25):
        cat.upsert(catalog_item(f"new-{j:02d}", j % N_CLUSTERS))
    assert cat.wait_for_rebuild(timeout=30)
    assert cat.rebuild_error is None
    assert cat.delta_size <= 15  # the rebuild covered what existed when it started
    for j in range(25):
        assert cat.search(cat.vector(f"new-{j:02d}"), 1)[0][0] == f"new-{j:02d}"


def test_search_is_safe_while_a_rebuild_runs(kind: str) -> None:
    """One thread serves (upserts and searches) while the builder thread swaps snapshots in."""
    cat, _, x, labels = build(kind)
    qs = queries(x, labels, n=10)
    errors: list[BaseException] = []
    for round_ in range(3):
        cat.rebuild(background=True)
        while True:
            done = cat._space.builder is None or not cat._space.builder.is_alive()
            try:
                cat.upsert(catalog_item(f"r{round_}", 1))
                for q in qs:
                    res = cat.search(q, K)
                    assert len(res) == K and len({i for i, _ in res}) == K
                    assert all(cat.is_recommendable(i) for i, _ in res)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                break
            if done:
                break
    assert cat.wait_for_rebuild(timeout=30)
    assert not errors
    assert cat.rebuild_error is None


def test_hot_swap_via_load_model(kind: str) -> None:
    cat, ids, _, _ = build(kind)
    cat.upsert(catalog_item("live-only", 3))
    # v2: the same items with other vectors (a different clustering)
    _, x2, labels2 = clustered(seed=11)
    cat.load_model(artifact(ids, x2, labels2, version="v2"), background=False)
    assert cat.model_version == "v2"
    assert cat.index_kind == kind
    np.testing.assert_allclose(cat.vector(ids[5]), x2[5], atol=1e-6)
    q = queries(x2, labels2, n=1)[0]
    got = [i for i, _ in cat.search(q, K)]
    want = brute_force([*ids, "live-only"], np.vstack([x2, cat.vectors(["live-only"])]), q, K)
    assert len(set(got) & set(want)) >= RECALL_TARGET * K
    assert cat.get("live-only") is not None and cat.vector("live-only") is not None


def test_same_inputs_same_results(kind: str) -> None:
    qs = queries(*clustered()[1:], n=20)
    runs = []
    for _ in range(2):
        cat, *_ = build(kind)
        for j in range(5):
            cat.upsert(catalog_item(f"new-{j}", j))
        runs.append(cat.search_many(qs, K))
    assert runs[0] == runs[1]


def test_ties_are_broken_by_item_id(kind: str) -> None:
    v = np.zeros((6, DIM), dtype=np.float32)
    v[:, 0] = 1.0
    v[5, 1] = 1.0  # one different item
    ids = ["f", "b", "e", "a", "d", "z"]
    cat = ItemCatalog(settings_for(kind))
    art = ModelArtifact("ties", ids, v, catalog=[CatalogItem(i, category=("x",)) for i in ids])
    cat.load_model(art, background=False)
    res = cat.search(v[0], 5)
    assert [i for i, _ in res] == ["a", "b", "d", "e", "f"]
    assert len({s for _, s in res}) == 1


def test_content_only_catalogue_searches(kind: str) -> None:
    """No model: content vectors, all items in the delta after a build until the next rebuild."""
    cat = ItemCatalog(settings_for(kind))
    for i in range(300):
        cat.upsert(CatalogItem(f"p{i:03d}", category=(f"top{i % 3}", f"leaf{i % 12}"), price=5.0 + i % 40))
    cat.rebuild()
    assert cat.model_version == "content-only"
    assert cat.index_kind == kind
    res = cat.search(cat.vector("p005"), 10)
    assert res[0][0] == "p005"
    assert all(cat.category_of(i) == cat.category_of("p005") for i, _ in res)


def test_changed_content_moves_the_item(kind: str) -> None:
    cat = ItemCatalog(settings_for(kind))
    for i in range(200):
        cat.upsert(CatalogItem(f"p{i:03d}", category=(f"top{i % 2}", f"leaf{i % 8}")))
    cat.rebuild()
    cat.upsert(CatalogItem("p000", category=("top1", "leaf1")))  # moved: p000 was top0/leaf0
    leaf0 = cat.vector("p008")
    assert "p000" not in [i for i, _ in cat.search(leaf0, 24)]
    assert cat.search(cat.vector("p001"), 30)[0][0] in {"p000", "p001"}
    assert "p000" in [i for i, _ in cat.search(cat.vector("p001"), 30)]


# ---------------------------------------------------------------------------- the index classes themselves
def test_top_k_breaks_ties_by_row_and_skips_blocked() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, -np.inf, 0.1], dtype=np.float32)
    hits = top_k(scores.copy(), 3)
    assert hits.rows.tolist() == [1, 3, 0]
    assert top_k(scores.copy(), 10).rows.tolist() == [1, 3, 0, 2, 5]
    assert top_k(scores.copy(), 3, tie_tolerance=1e-6).rows.tolist() == [1, 3, 0, 2]
    assert top_k(np.zeros(0, dtype=np.float32), 3).rows.size == 0


@pytest.mark.parametrize("kind", KINDS)
def test_index_classes_filter_and_batch(kind: str) -> None:
    _, x, labels = clustered(n=1000)
    index = (
        ExactIndex(x)
        if kind == "exact"
        else AnnoyIndex.build(x, n_trees=20, search_k=-1, seed=1, skip=np.zeros(len(x), dtype=bool))
    )
    assert index.kind == kind and len(index) == len(x)
    blocked = np.zeros(len(x), dtype=bool)
    blocked[::2] = True
    exclude = np.array([1, 3], dtype=np.int64)
    qs = queries(x, labels, n=5)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    for q, hits in zip(qs, index.search_many(qs, 10, blocked=blocked, exclude=exclude), strict=True):
        assert len(hits.rows) == 10
        assert not blocked[hits.rows].any() and not np.isin(hits.rows, exclude).any()
        assert np.all(np.diff(hits.scores) <= 1e-6)
        single = index.search(q, 10, blocked=blocked, exclude=exclude)
        assert single.rows.tolist() == hits.rows.tolist()


def test_annoy_build_is_deterministic_and_skips_rows() -> None:
    _, x, labels = clustered(n=800)
    skip = np.zeros(len(x), dtype=bool)
    skip[:100] = True
    a = AnnoyIndex.build(x, n_trees=10, search_k=300, seed=5, skip=skip)
    b = AnnoyIndex.build(x, n_trees=10, search_k=300, seed=5, skip=skip)
    assert len(a) == 700
    for q in queries(x, labels, n=10):
        q = q / np.linalg.norm(q)
        ra, rb = a.search(q, 10), b.search(q, 10)
        assert ra.rows.tolist() == rb.rows.tolist()
        assert (ra.rows >= 100).all()


def test_prebuilt_annoy_file_from_the_artifact_is_used(tmp_path: Path) -> None:
    ids, x, labels = clustered(n=1000)
    prebuilt = AnnoyIndex.build(x, n_trees=7, search_k=500, seed=3)
    save(artifact(ids, x, labels, version="pre"), tmp_path, annoy_index=prebuilt._index)
    cat = ItemCatalog(settings_for("annoy"))
    cat.load_model(load(tmp_path / "pre"), background=False)
    assert cat.index_kind == "annoy"
    assert cat._space.snapshot.index is not None and cat._space.snapshot.index.n_trees == 7  # the file's
    assert cat.search(x[7], 1)[0][0] == ids[7]


def test_mismatching_prebuilt_annoy_file_is_rebuilt(tmp_path: Path) -> None:
    ids, x, labels = clustered(n=1000)
    other = AnnoyIndex.build(clustered(n=1000, seed=99)[1], n_trees=7, search_k=500, seed=3)
    save(artifact(ids, x, labels, version="bad"), tmp_path, annoy_index=other._index)
    cat = ItemCatalog(settings_for("annoy"))
    cat.load_model(load(tmp_path / "bad"), background=False)
    assert cat.index_kind == "annoy"
    assert cat._space.snapshot.index is not None and cat._space.snapshot.index.n_trees == 10  # our build
    assert cat.search(x[7], 1)[0][0] == ids[7]


def test_a_failing_rebuild_keeps_the_old_snapshot_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    cat, *_ = build("annoy", delta_rebuild_items=5)
    attempts = []

    def broken(*args: object, **kwargs: object) -> AnnoyIndex:
        attempts.append(1)
        raise MemoryError("no room for trees")

    monkeypatch.setattr(AnnoyIndex, "build", broken)
    for j in range(200):
        cat.upsert(catalog_item(f"new-{j:03d}", j % N_CLUSTERS))
        cat.wait_for_rebuild(timeout=10)
    assert isinstance(cat.rebuild_error, MemoryError)
    assert cat.index_kind == "annoy"
    assert 1 <= len(attempts) <= 6  # retries back off as the delta doubles, not one per upsert
    assert cat.search(cat.vector("new-123"), 1)[0][0] == "new-123"  # the delta still serves new items
