"""Hot-path mechanics added by the benchmarks (issue 6): bulk catalogue loads, stale deltas, decoded-state cache."""

from __future__ import annotations

import base64

import numpy as np
import orjson

from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.index import AnnoyIndex
from stream_reco.core.items import ItemCatalog
from stream_reco.core.state import DecodedStates, VisitorState
from stream_reco.settings import Settings


def annoy_settings(**changes: object) -> Settings:
    return Settings(annoy_n_trees=4, annoy_search_k=200, exact_index_max_items=0, delta_rebuild_items=50).replace(
        **changes
    )


def item(i: int) -> CatalogItem:
    return CatalogItem(item_id=f"it-{i:04d}", title=f"t{i}", category=("dept", f"c{i % 7}"), price=10.0 + i % 5)


def test_bulk_load_builds_once_at_the_end(monkeypatch: object) -> None:
    builds: list[int] = []
    real = AnnoyIndex.build.__func__  # type: ignore[attr-defined]

    def counting(cls: type, vectors: np.ndarray, **kw: object) -> AnnoyIndex:
        builds.append(int(vectors.shape[0]))
        return real(cls, vectors, **kw)

    monkeypatch.setattr(AnnoyIndex, "build", classmethod(counting))  # type: ignore[attr-defined]
    cat = ItemCatalog(annoy_settings())
    cat.begin_bulk_load()
    for i in range(600):
        cat.upsert(item(i))
    assert builds == []
    # searches during the load are exact and see everything
    assert cat.search(cat.vector("it-0599"), 1)[0][0] == "it-0599"
    cat.end_bulk_load(background=False)
    assert builds == [600]
    assert cat.index_kind == "annoy" and cat.delta_size == 0


def test_a_delta_left_behind_by_a_build_is_rebuilt_on_the_next_search() -> None:
    cat = ItemCatalog(annoy_settings())
    for i in range(300):
        cat.upsert(item(i))
    assert cat.wait_for_rebuild(timeout=30)
    # what a build that finished after the last upsert leaves: a delta above the threshold, and no upsert
    # follows to trigger the next build (simulated by upserting while builds are held back)
    cat._bulk_loading = True
    for i in range(300, 400):
        cat.upsert(item(i))
    cat._bulk_loading = False
    assert cat.delta_size >= 100
    assert cat.search(cat.vector("it-0350"), 1)[0][0] == "it-0350"  # served by the delta, and starts a build
    assert cat.wait_for_rebuild(timeout=30)
    assert cat.delta_size == 0


def test_decoded_states_reuse_only_the_same_bytes_object() -> None:
    settings = Settings()
    state = VisitorState()
    state.apply(Event(event_id="e1", event_type="view", item_id="a", timestamp=1000, session_id="s"), settings,
                vector=np.eye(settings.embedding_dim, dtype=np.float32)[0])
    raw = state.to_bytes()
    cache = DecodedStates(cap=2)
    first = cache.get(b"k", raw)
    assert cache.get(b"k", raw) is first  # same bytes object: no second decode
    equal_copy = bytes(bytearray(raw))
    assert cache.get(b"k", equal_copy) is not first  # replaced value (even if equal): decoded again
    assert cache.get(b"k", equal_copy).to_bytes() == raw
    cache.remember(b"k", raw, state)
    assert cache.get(b"k", raw) is state
    for key in (b"x", b"y"):  # capped: the oldest entry goes
        cache.get(key, raw)
    assert cache.get(b"k", raw) is not state
    cache.forget(b"k")
    cache.clear()


def test_interest_vectors_are_kept_at_float16_precision_and_old_states_still_read() -> None:
    settings = Settings()
    rng = np.random.default_rng(3)
    state = VisitorState()
    for i in range(12):
        v = rng.standard_normal(settings.embedding_dim).astype(np.float32)
        state.apply(Event(event_id=f"e{i}", event_type="view", item_id=f"i{i}", timestamp=1000 + i, session_id="s"),
                    settings, vector=v / np.linalg.norm(v))
    assert state.interests
    for it in state.interests:  # live values are float16 values: the bytes hold exactly what the object holds
        assert it.vector.dtype == np.float32
        assert np.array_equal(it.vector, it.vector.astype(np.float16).astype(np.float32))
        assert abs(float(np.linalg.norm(it.vector)) - 1.0) < 1e-3
    raw = state.to_bytes()
    back = VisitorState.from_bytes(raw)
    assert back.to_bytes() == raw
    for x, y in zip(back.interests, state.interests, strict=True):
        assert np.array_equal(x.vector, y.vector)
    # format 1 (float32 vectors) is still read, rounded to float16 on load
    doc = orjson.loads(raw)
    doc["f"] = 1
    f32 = rng.standard_normal(settings.embedding_dim).astype("<f4")
    doc["i"][0][0] = base64.b64encode(f32.tobytes()).decode()
    old = VisitorState.from_dict(doc)
    assert np.array_equal(old.interests[0].vector, f32.astype(np.float16).astype(np.float32))
    assert len(orjson.loads(raw)["i"][0][0]) == 172  # a stored 64-d vector (344 characters as float32)
