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

Trust. A folder may be half-copied, truncated or tampered with: `load` checks every file (structure, shapes,
finite vectors, catalog lines against the catalog topic's schema) and raises `ModelError` naming the file
and the problem; a bad annoy.ann is not fatal (the catalog checks it and rebuilds the index). Which folder a
worker serves is `ArtifactPicker`'s choice: the newest one that loads, a corrupt one skipped (logged once,
retried when its files change).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_reco import logs
from stream_reco.core.events import CatalogItem
from stream_reco.logs import LogFormatError

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"


class ModelError(RuntimeError):
    """A model artifact is missing, unreadable or corrupt: the one error `load` raises for a bad folder.

    The message names the file (and line, for catalog.jsonl) and the problem, so an operator can fix it."""


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


def load(path: str | os.PathLike[str], expected_dim: int | None = None) -> ModelArtifact:
    """Read and check the artifact folder `path`; raise `ModelError` naming the file and the problem.

    Everything a worker would trip over later is checked here, before anything is swapped in: a model folder
    is written by another process (or copied by hand) and may be half-copied, truncated or tampered with.
    `expected_dim`, when given, is the worker's `embedding_dim`: vectors of another size are refused too.
    """
    path = Path(path)
    manifest_file = path / MANIFEST
    manifest = _read_json(manifest_file)
    if type(manifest) is not dict:
        raise ModelError(f"{manifest_file}: must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ModelError(f"{manifest_file}: unsupported artifact format {manifest.get('format')!r} "
                         f"(this version reads format {FORMAT})")
    version = manifest.get("version")
    if type(version) is not str or not version:
        raise ModelError(f"{manifest_file}: version must be a non-empty string, got {version!r}")
    dim, n_items = manifest.get("dim"), manifest.get("n_items")
    for name, value in (("dim", dim), ("n_items", n_items)):
        if type(value) is not int or value < 0:
            raise ModelError(f"{manifest_file}: {name} must be a non-negative integer, got {value!r}")
    vectors = _read_vectors(path / "vectors.npy", n_items, dim)
    if expected_dim is not None and dim != expected_dim:
        raise ModelError(f"{path / 'vectors.npy'}: vectors have {dim} dimensions, this worker's embedding_dim "
                         f"is {expected_dim}")
    item_ids = _read_item_ids(path / "item_ids.json", n_items)
    catalog = _read_catalog(path / "catalog.jsonl")
    popularity = _read_popularity(path / "popularity.json")
    covis = _read_covis(path / "covis.json")
    settings, training = manifest.get("settings", {}), manifest.get("training", {})
    if type(settings) is not dict or type(training) is not dict:
        raise ModelError(f"{manifest_file}: settings and training must be JSON objects")
    created_at = manifest.get("created_at", "")
    return ModelArtifact(
        version=version,
        item_ids=item_ids,
        vectors=vectors,
        catalog=catalog,
        popularity=popularity,
        covis=covis,
        settings=settings,
        training=training,
        created_at=created_at if type(created_at) is str else "",
        path=path,
    )


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{file}: missing") from None
    except OSError as exc:
        raise ModelError(f"{file}: cannot read ({exc.strerror or exc})") from None


def _read_json(file: Path) -> Any:
    try:
        return orjson.loads(_read_bytes(file))
    except orjson.JSONDecodeError as exc:
        raise ModelError(f"{file}: not valid JSON ({exc})") from None


def _read_vectors(file: Path, n_items: int, dim: int) -> np.ndarray:
    """The [n_items, dim] float matrix; a truncated, pickled or foreign file is refused, not half-read."""
    try:
        with open(file, "rb") as fh:
            vectors = np.load(fh, allow_pickle=False)
    except FileNotFoundError:
        raise ModelError(f"{file}: missing") from None
    except (OSError, ValueError, EOFError) as exc:  # numpy reports a bad header or short data as ValueError
        raise ModelError(f"{file}: cannot read as a .npy array ({exc})") from None
    if not isinstance(vectors, np.ndarray):
        raise ModelError(f"{file}: not a .npy array (an .npz archive?)")
    if vectors.dtype.kind != "f":
        raise ModelError(f"{file}: vectors must be floats, got dtype {vectors.dtype}")
    if vectors.shape != (n_items, dim):
        raise ModelError(f"{file}: shape {vectors.shape}, the manifest says [{n_items}, {dim}]")
    vectors = vectors.astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ModelError(f"{file}: {bad.size} rows are zero or not finite (first: row {int(bad[0])})")
    return vectors


def _read_item_ids(file: Path, n_items: int) -> list[str]:
    ids = _read_json(file)
    if type(ids) is not list or not all(type(i) is str and i for i in ids):
        raise ModelError(f"{file}: must be a JSON list of non-empty strings")
    if len(ids) != n_items:
        raise ModelError(f"{file}: {len(ids)} ids for {n_items} vector rows")
    if len(set(ids)) != len(ids):
        raise ModelError(f"{file}: duplicate item ids")
    return ids


def _read_catalog(file: Path) -> list[CatalogItem]:
    """Contract items, each line checked by the catalog topic's own schema (`logs.read_items`)."""
    if not file.exists():
        return []
    try:
        return [item for _, item in logs.read_items(file)]
    except LogFormatError as exc:
        raise ModelError(str(exc)) from None


def _is_weight(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0  # type: ignore[arg-type]


def _read_popularity(file: Path) -> dict[str, float]:
    if not file.exists():
        return {}
    doc = _read_json(file)
    if type(doc) is not dict or not all(_is_weight(v) for v in doc.values()):
        raise ModelError(f"{file}: must be a JSON object of item id to a non-negative finite number")
    return {k: float(v) for k, v in doc.items()}


def _read_covis(file: Path) -> dict[str, list[tuple[str, float]]]:
    if not file.exists():
        return {}
    doc = _read_json(file)
    if type(doc) is not dict:
        raise ModelError(f"{file}: must be a JSON object of item id to [[neighbour id, weight], ...]")
    covis = {}
    for item_id, pairs in doc.items():
        if type(pairs) is not list or not all(
            type(p) is list and len(p) == 2 and type(p[0]) is str and _is_weight(p[1]) for p in pairs
        ):
            raise ModelError(f"{file}: {item_id!r} must map to [neighbour id, non-negative weight] pairs")
        covis[item_id] = [(n, float(w)) for n, w in pairs]
    return covis


def version_paths(root: str | os.PathLike[str]) -> list[Path]:
    """Complete version folders under `root`, newest first. A folder without a manifest is still being
    written or copied; a hidden one is `save`'s temporary folder, about to be renamed."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).exists()),
        reverse=True,
    )


def latest_path(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete version folder under `root`, or None when there is none (valid or not: see
    `ArtifactPicker` for the newest one that loads)."""
    versions = version_paths(root)
    return versions[0] if versions else None


#: (name, size, mtime, ctime) of a folder and each of its entries
_Fingerprint = tuple[tuple[str, int, int, int], ...]


def _fingerprint(path: Path) -> _Fingerprint:
    """What changes when a folder's files are rewritten, replaced, grown or re-permissioned."""
    try:
        entries = [path, *path.iterdir()]
        return tuple(sorted((e.name, (st := e.stat()).st_size, st.st_mtime_ns, st.st_ctime_ns) for e in entries))
    except OSError:
        return ()


class ArtifactPicker:
    """Chooses the artifact a worker should serve: the one the `model` setting names, or the newest *valid*
    one under `<data_dir>/models` for `latest`.

    A folder that fails to load (`load` raises `ModelError`) or that the caller `reject`s (the catalog refused
    it) is logged once and remembered with a fingerprint of its files; it is skipped, so `latest` falls back
    to the next older folder, until its files change, when it is tried again. So a corrupt folder neither
    stops a worker nor repeats the same error on every poll, and a fixed or completed copy is picked up.
    Memory: one fingerprint per bad folder still on disk. Thread-safe: a worker picks at start-up on its
    event loop and in an executor thread when it polls.
    """

    def __init__(self, model: str, data_dir: str | os.PathLike[str], expected_dim: int | None = None) -> None:
        self.model = model
        self.data_dir = data_dir
        self.expected_dim = expected_dim
        self._bad: dict[Path, _Fingerprint] = {}
        #: folders refused so far (each counted once per version of its files): a worker statistic
        self.errors = 0
        self._lock = threading.RLock()

    def candidates(self) -> list[Path]:
        """Folders to consider, best first."""
        if self.model == "latest":
            return version_paths(models_dir(self.data_dir))
        return [Path(self.model).expanduser()]

    def pick(self, current: Path | None) -> tuple[Path, ModelArtifact] | None:
        """The best loadable artifact when it is not `current` (None: keep serving what is in use)."""
        with self._lock:
            return self._pick(current)

    def _pick(self, current: Path | None) -> tuple[Path, ModelArtifact] | None:
        candidates = self.candidates()
        for gone in self._bad.keys() - set(candidates):
            del self._bad[gone]
        for path in candidates:
            if path == current:
                return None
            before = _fingerprint(path)  # taken before reading: a change during the read is a change
            if self._bad.get(path) == before:
                continue
            try:
                return path, load(path, self.expected_dim)
            except ModelError as exc:
                self.reject(path, exc, before)
        return None

    def reject(self, path: Path, error: BaseException, fingerprint: _Fingerprint | None = None) -> None:
        """Remember `path` as unusable until its files change, and say so once."""
        with self._lock:
            self._bad[path] = _fingerprint(path) if fingerprint is None else fingerprint
            self.errors += 1
        log.error("model %s not used (retried when its files change): %s", path, error)
