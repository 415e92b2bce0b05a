"""A corrupt model folder is one clear `ModelError`, and never stops a worker from serving its current model.

Issue 11, defect 7: a bad manifest, a truncated `.npy`, a catalog line that does not parse or vectors of the
wrong dimension raised out of the model watcher and killed the worker. Every kind of corruption must be
reported as `model_artifact.ModelError` naming the file and the problem; `ArtifactPicker` (what the worker's
watcher uses) skips a corrupt folder, reports it once, falls back to the newest valid artifact, and retries
the folder when it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_reco.core.events import CatalogItem
from stream_reco.model import artifact as model_artifact
from stream_reco.model.artifact import ArtifactPicker, ModelArtifact, ModelError

DIM = 8


def make_artifact(version: str, n: int = 5, dim: int = DIM) -> ModelArtifact:
    rng = np.random.default_rng(len(version))
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(n)]
    return ModelArtifact(
        version=version,
        item_ids=ids,
        vectors=vectors,
        catalog=[CatalogItem(i, category=("A", "B"), updated_at=1) for i in ids],
        popularity={"i0": 2.5, "i1": 1.0},
        covis={"i0": [("i1", 0.5)]},
    )


def saved(root: Path, version: str = "2026-01-01T00-00-00Z-0001", **kw: int) -> Path:
    return model_artifact.save(make_artifact(version, **kw), root)


def patch_json(path: Path, change: Callable[[dict], object]) -> None:
    doc = orjson.loads(path.read_bytes())
    path.write_bytes(orjson.dumps(change(doc)))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def without(key: str) -> Callable[[dict], dict]:
    return lambda doc: {k: v for k, v in doc.items() if k != key}


# Every kind of corruption: (id, damage done to a valid folder, file the error must name, words it must say)
CORRUPTIONS: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("manifest-missing", lambda p: (p / "manifest.json").unlink(), "manifest.json", "missing"),
    ("manifest-not-json", lambda p: (p / "manifest.json").write_bytes(b"{not json"), "manifest.json", "JSON"),
    ("manifest-truncated", lambda p: truncate(p / "manifest.json"), "manifest.json", "JSON"),
    ("manifest-not-object", lambda p: (p / "manifest.json").write_bytes(b"[1, 2]"), "manifest.json", "object"),
    ("manifest-format", lambda p: patch_json(p / "manifest.json", lambda d: {**d, "format": 99}), "manifest.json",
     "format"),
    ("manifest-no-version", lambda p: patch_json(p / "manifest.json", without("version")), "manifest.json",
     "version"),
    ("manifest-dim-type", lambda p: patch_json(p / "manifest.json", lambda d: {**d, "dim": "8"}), "manifest.json",
     "dim"),
    ("manifest-dim-mismatch", lambda p: patch_json(p / "manifest.json", lambda d: {**d, "dim": DIM + 1}),
     "vectors.npy", "shape"),
    ("manifest-count-mismatch", lambda p: patch_json(p / "manifest.json", lambda d: {**d, "n_items": 99}),
     "vectors.npy", "shape"),
    ("vectors-missing", lambda p: (p / "vectors.npy").unlink(), "vectors.npy", "missing"),
    ("vectors-truncated", lambda p: truncate(p / "vectors.npy", 0.8), "vectors.npy", "npy"),
    ("vectors-header-only", lambda p: truncate(p / "vectors.npy", 0.2), "vectors.npy", "npy"),
    ("vectors-garbage", lambda p: (p / "vectors.npy").write_bytes(b"\x00garbage" * 40), "vectors.npy", "npy"),
    ("vectors-pickled", lambda p: np.save(p / "vectors.npy", np.array([object()] * 5), allow_pickle=True),
     "vectors.npy", "npy"),
    ("vectors-one-dimensional", lambda p: np.save(p / "vectors.npy", np.ones(5 * DIM, dtype=np.float32)),
     "vectors.npy", "shape"),
    ("vectors-integers", lambda p: np.save(p / "vectors.npy", np.ones((5, DIM), dtype=np.int64)),
     "vectors.npy", "float"),
    ("vectors-nan", lambda p: np.save(p / "vectors.npy", np.full((5, DIM), np.nan, dtype=np.float32)),
     "vectors.npy", "finite"),
    ("vectors-zero-row", lambda p: np.save(p / "vectors.npy", np.vstack(
        [np.zeros((1, DIM)), np.ones((4, DIM))]).astype(np.float32)), "vectors.npy", "zero"),
    ("item-ids-missing", lambda p: (p / "item_ids.json").unlink(), "item_ids.json", "missing"),
    ("item-ids-truncated", lambda p: truncate(p / "item_ids.json"), "item_ids.json", "JSON"),
    ("item-ids-not-strings", lambda p: (p / "item_ids.json").write_bytes(b"[1, 2, 3, 4, 5]"), "item_ids.json",
     "string"),
    ("item-ids-duplicate", lambda p: (p / "item_ids.json").write_bytes(b'["a", "b", "a", "c", "d"]'),
     "item_ids.json", "duplicate"),
    ("item-ids-count", lambda p: (p / "item_ids.json").write_bytes(b'["a", "b"]'), "item_ids.json", "5"),
    ("catalog-line-not-json", lambda p: (p / "catalog.jsonl").write_bytes(b'{"item_id": "i0"}\n{"item_id": \n'),
     "catalog.jsonl:2", "JSON"),
    ("catalog-line-not-an-item", lambda p: (p / "catalog.jsonl").write_bytes(b'{"item_id": 5}\n'),
     "catalog.jsonl:1", "item_id"),
    ("catalog-line-truncated", lambda p: truncate(p / "catalog.jsonl", 0.7), "catalog.jsonl", "JSON"),
    ("popularity-not-json", lambda p: (p / "popularity.json").write_bytes(b"{"), "popularity.json", "JSON"),
    ("popularity-negative", lambda p: (p / "popularity.json").write_bytes(b'{"i0": -1}'), "popularity.json",
     "non-negative"),
    ("popularity-not-a-number", lambda p: (p / "popularity.json").write_bytes(b'{"i0": "many"}'),
     "popularity.json", "non-negative"),
    ("covis-not-pairs", lambda p: (p / "covis.json").write_bytes(b'{"i0": [["i1"]]}'), "covis.json", "pairs"),
    ("covis-not-object", lambda p: (p / "covis.json").write_bytes(b"[]"), "covis.json", "object"),
    ("vectors-not-a-file", lambda p: ((p / "vectors.npy").unlink(), (p / "vectors.npy").mkdir()), "vectors.npy",
     "cannot read"),
]


@pytest.mark.parametrize(("damage", "file", "words"), [pytest.param(*c[1:], id=c[0]) for c in CORRUPTIONS])
def test_every_corruption_is_one_model_error_naming_the_file(
    tmp_path: Path, damage: Callable[[Path], None], file: str, words: str
) -> None:
    path = saved(tmp_path)
    model_artifact.load(path)  # valid before the damage
    damage(path)
    with pytest.raises(ModelError) as info:
        model_artifact.load(path)
    message = str(info.value)
    assert str(path / file.split(":")[0]) in message, message
    assert file in message and words in message, message


def test_wrong_dimensions_for_this_worker_is_a_model_error(tmp_path: Path) -> None:
    path = saved(tmp_path)
    assert model_artifact.load(path, expected_dim=DIM).dim == DIM
    with pytest.raises(ModelError, match=rf"vectors\.npy.*{DIM} dimensions.*embedding_dim is 16"):
        model_artifact.load(path, expected_dim=16)


def test_a_valid_artifact_round_trips(tmp_path: Path) -> None:
    art = make_artifact("2026-01-01T00-00-00Z-0001")
    loaded = model_artifact.load(model_artifact.save(art, tmp_path), expected_dim=DIM)
    assert loaded.version == art.version and loaded.item_ids == art.item_ids
    np.testing.assert_array_equal(loaded.vectors, art.vectors)
    assert loaded.catalog == art.catalog and loaded.popularity == art.popularity and loaded.covis == art.covis


# ------------------------------------------------------------------------------------------- the picker
V1, V2, V3 = (f"2026-01-0{d}T00-00-00Z-0001" for d in (1, 2, 3))


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_latest_falls_back_to_the_newest_valid_artifact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    saved(models, V1)
    saved(models, V2)
    truncate(saved(models, V3) / "vectors.npy")
    picker = ArtifactPicker("latest", tmp_path, expected_dim=DIM)
    with caplog.at_level(logging.ERROR, logger="stream_reco"):
        picked = picker.pick(current=None)
    assert picked is not None and picked[0] == models / V2 and picked[1].version == V2
    assert len(errors(caplog)) == 1 and V3 in errors(caplog)[0] and "vectors.npy" in errors(caplog)[0]


def test_a_corrupt_folder_is_reported_once_and_retried_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    saved(models, V1)
    picker = ArtifactPicker("latest", tmp_path, expected_dim=DIM)
    first = picker.pick(current=None)
    assert first is not None
    bad = saved(models, V2)
    (bad / "catalog.jsonl").write_bytes(b"not json\n")
    with caplog.at_level(logging.ERROR, logger="stream_reco"):
        for _ in range(5):  # the watcher's ticks: the current model stays, one error line in all
            assert picker.pick(current=first[0]) is None
    assert len(errors(caplog)) == 1 and "catalog.jsonl:1" in errors(caplog)[0]
    saved(models, V2)  # the operator rewrites the folder: it is tried again, and now used
    again = picker.pick(current=first[0])
    assert again is not None and again[1].version == V2


def test_a_folder_without_manifest_or_a_hidden_one_is_not_a_candidate(tmp_path: Path) -> None:
    models = tmp_path / "models"
    saved(models, V1)
    (models / V3).mkdir()  # still being copied: no manifest yet
    hidden = saved(models, V2)
    hidden.rename(models / f".{V2}.tmp")  # save()'s temporary name, manifest included
    picked = ArtifactPicker("latest", tmp_path, expected_dim=DIM).pick(current=None)
    assert picked is not None and picked[0] == models / V1


def test_a_named_corrupt_path_is_reported_once_and_nothing_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = saved(tmp_path / "elsewhere", V1)
    (path / "manifest.json").write_bytes(b"")
    picker = ArtifactPicker(str(path), tmp_path, expected_dim=DIM)
    with caplog.at_level(logging.ERROR, logger="stream_reco"):
        assert picker.pick(current=None) is None
        assert picker.pick(current=None) is None
    assert len(errors(caplog)) == 1 and str(path / "manifest.json") in errors(caplog)[0]
    missing = ArtifactPicker(str(tmp_path / "nowhere"), tmp_path, expected_dim=DIM)
    with caplog.at_level(logging.ERROR, logger="stream_reco"):
        assert missing.pick(current=None) is None
    assert "nowhere" in errors(caplog)[-1]


def test_a_model_the_catalog_refuses_is_remembered_like_a_corrupt_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    saved(models, V1)
    picker = ArtifactPicker("latest", tmp_path, expected_dim=DIM)
    picked = picker.pick(current=None)
    assert picked is not None
    picker.reject(picked[0], ValueError("refused by the catalog"))
    assert picker.pick(current=None) is None
