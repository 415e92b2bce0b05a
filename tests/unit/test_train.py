"""train(): finite unit vectors, co-viewed items closer than random, priors, artifact round-trip, CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from stream_reco.cli import cli
from stream_reco.core.events import CatalogItem, Event
from stream_reco.evaluate.loaders import LogRecord
from stream_reco.model import artifact as artifact_mod
from stream_reco.model.train import TrainError, factorise, ppmi, randomized_svd, train, train_and_save
from stream_reco.settings import Settings

N_CLUSTERS = 4
ITEMS_PER_CLUSTER = 12
VISITORS = 240
EVENTS_PER_VISITOR = 8
SEED = 7


def cluster_log(seed: int = SEED) -> tuple[list[Event], list[CatalogItem]]:
    """Visitors who each browse one cluster of items (a category), plus a cold item seen once."""
    rng = random.Random(seed)
    events: list[Event] = []
    for v in range(VISITORS):
        cluster = v % N_CLUSTERS
        for n in range(EVENTS_PER_VISITOR):
            item = f"c{cluster}-{rng.randrange(ITEMS_PER_CLUSTER)}"
            kind = "add_to_cart" if n == EVENTS_PER_VISITOR - 1 else "view"
            events.append(Event(f"e{v}-{n}", kind, item, 1_000_000 + v * 100 + n, session_id=f"s{v}"))
    events.append(Event("cold", "view", "c0-cold", 9_000_000, session_id="lonely"))
    events.append(Event("d", "dismiss", "c1-0", 9_000_001, session_id="s1"))
    catalog = [
        CatalogItem(f"c{c}-{i}", category=("Shop", f"cat{c}"))
        for c in range(N_CLUSTERS)
        for i in range(ITEMS_PER_CLUSTER)
    ]
    catalog.append(CatalogItem("c0-cold", category=("Shop", "cat0")))
    return events, catalog


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.load(env={}, embedding_dim=16)


@pytest.fixture(scope="module")
def trained(settings: Settings) -> artifact_mod.ModelArtifact:
    events, catalog = cluster_log()
    return train(events, catalog, settings, progress=False, version="v-test")


def test_vectors_are_finite_unit_rows_for_every_item(trained: artifact_mod.ModelArtifact) -> None:
    assert trained.vectors.shape == (N_CLUSTERS * ITEMS_PER_CLUSTER + 1, 16)
    assert np.all(np.isfinite(trained.vectors))
    assert np.allclose(np.linalg.norm(trained.vectors, axis=1), 1.0, atol=1e-5)
    assert len(set(trained.item_ids)) == len(trained.item_ids)


def test_co_viewed_items_are_closer_than_random(trained: artifact_mod.ModelArtifact) -> None:
    row = {item: i for i, item in enumerate(trained.item_ids)}
    sims = trained.vectors @ trained.vectors.T
    same, other = [], []
    for c in range(N_CLUSTERS):
        for d in range(N_CLUSTERS):
            for i in range(ITEMS_PER_CLUSTER):
                for j in range(i + 1, ITEMS_PER_CLUSTER):
                    s = sims[row[f"c{c}-{i}"], row[f"c{d}-{j}"]]
                    (same if c == d else other).append(s)
    assert np.mean(same) > np.mean(other) + 0.5
    # the cold item has no co-occurrence: it is placed with its category's trained items
    cold = trained.vectors[row["c0-cold"]]
    by_cluster = [
        np.mean([cold @ trained.vectors[row[f"c{c}-{i}"]] for i in range(ITEMS_PER_CLUSTER)]) for c in range(N_CLUSTERS)
    ]
    assert int(np.argmax(by_cluster)) == 0


def test_priors_and_metadata(trained: artifact_mod.ModelArtifact, settings: Settings) -> None:
    assert set(trained.popularity) == set(trained.item_ids)
    assert all(v > 0 for v in trained.popularity.values())
    neighbours = trained.covis["c0-0"]
    assert 0 < len(neighbours) <= settings.covis_neighbours
    assert all(n.startswith("c0-") for n, _ in neighbours)  # co-visited only within the cluster
    weights = [w for _, w in neighbours]
    assert weights == sorted(weights, reverse=True)
    t = trained.training
    assert t["n_events"] == VISITORS * EVENTS_PER_VISITOR + 2
    assert t["n_positive_events"] == VISITORS * EVENTS_PER_VISITOR + 1  # the dismissal is not learned
    assert t["n_items"] == len(trained.item_ids) and t["parameters"]["dim"] == 16
    assert trained.settings["embedding_dim"] == 16


def test_training_is_deterministic_and_accepts_log_records(
    settings: Settings, trained: artifact_mod.ModelArtifact
) -> None:
    events, catalog = cluster_log()
    again = train([LogRecord(e) for e in events], catalog, settings, progress=False)
    assert again.item_ids == trained.item_ids
    assert np.allclose(again.vectors, trained.vectors)


def test_artifact_round_trip(tmp_path: Path, trained: artifact_mod.ModelArtifact) -> None:
    path = artifact_mod.save(trained, tmp_path)
    back = artifact_mod.load(path)
    assert back.item_ids == trained.item_ids
    assert np.array_equal(back.vectors, trained.vectors.astype(np.float32))
    assert back.popularity == pytest.approx(trained.popularity)
    assert back.covis["c0-0"] == [(n, pytest.approx(w)) for n, w in trained.covis["c0-0"]]
    assert back.training["n_items"] == trained.training["n_items"]
    assert {i.item_id for i in back.catalog} == {i.item_id for i in trained.catalog}


def test_annoy_index_is_prebuilt_on_request(tmp_path: Path, settings: Settings) -> None:
    events, catalog = cluster_log()
    art, path = train_and_save(events, catalog, settings.replace(annoy_n_trees=5), tmp_path, annoy=True, progress=False)
    assert (path / "annoy.ann").exists() and art.training["annoy"]["n_trees"] == 5
    from stream_reco.core.index import AnnoyIndex

    index = AnnoyIndex.load(path / "annoy.ann", vectors=art.vectors, search_k=100)
    assert len(index) == len(art.item_ids)


def test_empty_or_negative_only_log_is_an_error(settings: Settings) -> None:
    with pytest.raises(TrainError):
        train([Event("d", "dismiss", "a", 1, session_id="s")], None, settings, progress=False)


def test_randomized_svd_matches_exact_leading_factors() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 300))
    matrix = sp.csr_matrix(low_rank)
    _, s = randomized_svd(matrix, 5, seed=1)
    exact = np.linalg.svd(low_rank, compute_uv=False)[:5]
    assert np.allclose(s, exact, rtol=1e-6)
    assert factorise(sp.csr_matrix((3, 3)), 4, 0).shape == (3, 4)


def test_ppmi_drops_pairs_seen_less_than_chance() -> None:
    import scipy.sparse as sp

    counts = sp.csr_matrix(np.array([[0, 10, 1], [10, 0, 10], [1, 10, 0]], dtype=float))
    m = ppmi(counts, 1.0).toarray()  # row sums 11, 20, 11; total 42
    assert m[0, 1] == pytest.approx(np.log(10 * 42 / (11 * 20)))
    assert m[0, 2] == 0  # log(1 * 42 / (11 * 11)) < 0: dropped
    assert np.all(m >= 0)


def test_train_command_writes_a_versioned_artifact(tmp_path: Path) -> None:
    events, catalog = cluster_log()
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(e.to_dict()) for e in events) + b"\n")
    (tmp_path / "cat.jsonl").write_bytes(b"\n".join(orjson.dumps(i.to_dict()) for i in catalog) + b"\n")
    env = {"STREAM_RECO_DATA_DIR": str(tmp_path / "data"), "STREAM_RECO_EMBEDDING_DIM": "8"}
    result = CliRunner().invoke(cli, ["train", str(log), "--catalog", str(tmp_path / "cat.jsonl")], env=env)
    assert result.exit_code == 0, result.output
    latest = artifact_mod.latest_path(tmp_path / "data" / "models")
    assert latest is not None
    art = artifact_mod.load(latest)
    assert art.dim == 8 and len(art.catalog) == len(catalog)
    bad = CliRunner().invoke(cli, ["train", str(tmp_path / "missing.jsonl")], env=env)
    assert bad.exit_code != 0 and "no such log file" in bad.output
