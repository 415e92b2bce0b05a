"""The versioned model artifact: item vectors, id map, catalog snapshot, settings and training metadata.

One folder per version under ``<data_dir>/models/<version>/``; nothing is pickled (``.npy`` loaded with
``allow_pickle=False`` plus JSON), so a model file cannot run code in a worker. A folder is written
under a temporary name and renamed into place, so a worker watching the folder never sees half of one.

Layout of a version folder:
    manifest.json   {"format": 1, "version", "created_at", "dim", "n_items", "settings", "training"}
    item_ids.json   list of item ids; row i of vectors.npy belongs to item_ids[i]
    vectors.npy     float32 [n_items, dim], L2-normalised rows
    catalog.jsonl   contract items known at training time (may be empty)
    popularity.json optional {item_id: decayed count} at the end of the training log
    covis.json      optional {item_id: [[neighbour_id, weight], ...]} co-visitation at training time
    annoy.ann       optional prebuilt annoy index over vectors.npy (angular), built with the manifest's
                    "annoy" parameters
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_reco.core.events import CatalogItem

FORMAT = 1


class ModelError(RuntimeError):
    """A model artifact is missing or unreadable."""


@dataclass
class ModelArtifact:
    version: str
    item_ids: list[str]
    vectors: np.ndarray
    catalog: list[CatalogItem] = field(default_factory=list)
    popularity: dict[str, float] = field(default_factory=dict)
    covis: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    path: Path | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def annoy_path(self) -> Path | None:
        if self.path is None:
            return None
        p = self.path / "annoy.ann"
        return p if p.exists() else None


def new_version(now: float | None = None) -> str:
    """Sortable version names: UTC time plus a short suffix so two runs in one second differ."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime(now))
    return f"{stamp}-{os.getpid() % 0xFFFF:04x}{int(now * 1000) % 1000:03d}"


def models_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / "models"


def save(artifact: ModelArtifact, root: str | os.PathLike[str], annoy_index: Any = None) -> Path:
    """Write `artifact` as `<root>/<version>/` atomically and return that path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / artifact.version
    tmp = root / f".{artifact.version}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    vectors = np.ascontiguousarray(artifact.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(artifact.item_ids):
        raise ModelError(f"vectors shape {vectors.shape} does not match {len(artifact.item_ids)} item ids")
    np.save(tmp / "vectors.npy", vectors, allow_pickle=False)
    (tmp / "item_ids.json").write_bytes(orjson.dumps(artifact.item_ids))
    with open(tmp / "catalog.jsonl", "wb") as fh:
        for item in artifact.catalog:
            fh.write(orjson.dumps(item.to_dict()) + b"\n")
    if artifact.popularity:
        (tmp / "popularity.json").write_bytes(orjson.dumps(artifact.popularity))
    if artifact.covis:
        (tmp / "covis.json").write_bytes(orjson.dumps(artifact.covis))
    if annoy_index is not None:
        annoy_index.save(str(tmp / "annoy.ann"))
    manifest = {
        "format": FORMAT,
        "version": artifact.version,
        "created_at": artifact.created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dim": int(vectors.shape[1]),
        "n_items": len(artifact.item_ids),
        "settings": artifact.settings,
        "training": artifact.training,
    }
    # the manifest is written last: a folder without one is incomplete and ignored by `latest`
    (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    artifact.path = final
    return final


def load(path: str | os.PathLike[str]) -> ModelArtifact:
    path = Path(path)
    try:
        manifest = orjson.loads((path / "manifest.json").read_bytes())
        if manifest.get("format") != FORMAT:
            raise ModelError(f"{path}: unsupported artifact format {manifest.get('format')!r}")
        vectors = np.load(path / "vectors.npy", allow_pickle=False).astype(np.float32, copy=False)
        item_ids = orjson.loads((path / "item_ids.json").read_bytes())
        catalog = []
        cat_path = path / "catalog.jsonl"
        if cat_path.exists():
            with open(cat_path, "rb") as fh:
                catalog = [CatalogItem.from_dict(orjson.loads(line)) for line in fh if line.strip()]
        popularity = _optional_json(path / "popularity.json", {})
        covis_raw = _optional_json(path / "covis.json", {})
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model artifact {path}: {exc}") from exc
    covis = {k: [(str(n), float(w)) for n, w in v] for k, v in covis_raw.items()}
    return ModelArtifact(
        version=manifest["version"],
        item_ids=list(item_ids),
        vectors=vectors,
        catalog=catalog,
        popularity={str(k): float(v) for k, v in popularity.items()},
        covis=covis,
        settings=manifest.get("settings", {}),
        training=manifest.get("training", {}),
        created_at=manifest.get("created_at", ""),
        path=path,
    )


def _optional_json(path: Path, default: Any) -> Any:
    return orjson.loads(path.read_bytes()) if path.exists() else default


def latest_path(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete version folder under `root`, or None when there is none."""
    root = Path(root)
    if not root.is_dir():
        return None
    versions = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").exists())
    return versions[-1] if versions else None


def resolve(model: str, data_dir: str | os.PathLike[str]) -> Path | None:
    """Resolve the `model` setting (`latest` or a path) to an artifact folder, None if no model exists."""
    if model == "latest":
        return latest_path(models_dir(data_dir))
    path = Path(model).expanduser()
    if not (path / "manifest.json").exists():
        raise ModelError(f"model {path} has no manifest.json")
    return path
