"""Small deterministic shops for the core's unit tests: a catalogue with clustered vectors, and events.

Every leaf category is a tight cluster around its own random direction (seeded), so "views in one
category" mean "views in one region of item space", like trained embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from stream_reco.core.events import CatalogItem, Event
from stream_reco.model.artifact import ModelArtifact
from stream_reco.settings import Settings

DIM = 16
ITEMS_PER_LEAF = 12
#: spread of items around their leaf's direction (small: leaves are well separated clusters)
NOISE = 0.15
T0 = 1_764_000_000_000  # a fixed epoch-ms start time
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000

LEAVES: tuple[tuple[str, ...], ...] = (
    ("Kitchen", "Appliances", "Stand mixers"),
    ("Kitchen", "Appliances", "Kettles"),
    ("Kitchen", "Cookware", "Pans"),
    ("Furniture", "Living room", "Sofas"),
    ("Furniture", "Living room", "Coffee tables"),
    ("Furniture", "Bedroom", "Beds"),
    ("Garden", "Tools", "Spades"),
    ("Garden", "Plants", "Roses"),
)


def item_id(leaf: int, n: int) -> str:
    return f"i{leaf}-{n:02d}"


def make_settings(**overrides: object) -> Settings:
    """Default settings at the fixtures' vector dimension (plus any overrides)."""
    return Settings(embedding_dim=DIM).replace(**overrides)


def make_items(seed: int = 7) -> list[CatalogItem]:
    out = []
    for li, path in enumerate(LEAVES):
        for n in range(ITEMS_PER_LEAF):
            out.append(
                CatalogItem(
                    item_id=item_id(li, n),
                    title=f"{path[-1][:-1]} model {n}",
                    category=path,
                    price=float(10 + n),
                    attributes={"brand": "Acme" if n % 3 == 0 else "Other"},
                    updated_at=T0,
                )
            )
    return out


def make_artifact(items: Iterable[CatalogItem] | None = None, seed: int = 7, version: str = "test-v1") -> ModelArtifact:
    """Clustered unit vectors per leaf category, with popularity and co-visitation priors left empty."""
    items = list(items if items is not None else make_items(seed))
    rng = np.random.default_rng(seed)
    centres = {path: rng.standard_normal(DIM) for path in LEAVES}
    vecs = []
    for it in items:
        c = centres[it.category] / np.linalg.norm(centres[it.category])
        v = c + NOISE * rng.standard_normal(DIM)
        vecs.append(v / np.linalg.norm(v))
    return ModelArtifact(
        version=version,
        item_ids=[it.item_id for it in items],
        vectors=np.asarray(vecs, dtype=np.float32),
        catalog=items,
    )


def make_catalog(settings: Settings | None = None, artifact: ModelArtifact | None = None):  # noqa: ANN201
    """The real `ItemCatalog`, loaded with the fixture artifact and its items."""
    try:
        from stream_reco.core.items import ItemCatalog
    except ImportError:
        ItemCatalog = _TempCatalog  # noqa: N806

    settings = settings or make_settings()
    catalog = ItemCatalog(settings)
    artifact = artifact or make_artifact()
    for it in artifact.catalog:
        catalog.upsert(it)
    catalog.load_model(artifact)
    return catalog


_ids = itertools.count()


def ev(
    event_type: str,
    item: str,
    ts: int,
    user: str | None = None,
    session: str | None = "s1",
    page_category: str | None = None,
    event_id: str | None = None,
) -> Event:
    """One contract event; unique event ids unless given."""
    return Event(
        event_id=event_id or f"e{next(_ids)}",
        event_type=event_type,  # type: ignore[arg-type]
        item_id=item,
        timestamp=ts,
        user_id=user,
        session_id=session,
        page_category=page_category,
    )


class _TempCatalog:  # TEMPORARY stand-in until stream_reco.core.items lands; removed afterwards
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._items: dict[str, CatalogItem] = {}
        self._vec: dict[str, np.ndarray] = {}
        self.model_version = "none"

    def load_model(self, artifact: ModelArtifact) -> None:
        self.model_version = artifact.version
        for it in artifact.catalog:
            self._items.setdefault(it.item_id, it)
        for i, v in zip(artifact.item_ids, artifact.vectors, strict=True):
            self._vec[i] = v.astype(np.float32)

    def upsert(self, item: CatalogItem) -> None:
        self._items[item.item_id] = item

    def get(self, item_id: str) -> CatalogItem | None:
        return self._items.get(item_id)

    def vector(self, item_id: str) -> np.ndarray | None:
        return self._vec.get(item_id) if item_id in self._items else None

    def vectors(self, item_ids):  # noqa: ANN001, ANN201
        out = np.zeros((len(item_ids), DIM), dtype=np.float32)
        for n, i in enumerate(item_ids):
            v = self.vector(i)
            if v is not None:
                out[n] = v
        return out

    def is_recommendable(self, item_id: str) -> bool:
        it = self._items.get(item_id)
        return it is not None and it.recommendable

    def category_of(self, item_id: str) -> tuple[str, ...]:
        it = self._items.get(item_id)
        return it.category if it else ()

    def search_many(self, queries, k, exclude=()):  # noqa: ANN001, ANN201
        ids = sorted(i for i in self._items if self.is_recommendable(i) and i in self._vec and i not in set(exclude))
        if not ids:
            return [[] for _ in queries]
        m = np.stack([self._vec[i] for i in ids])
        out = []
        for q in queries:
            s = m @ q
            order = np.lexsort((np.arange(len(ids)), -s))[:k]
            out.append([(ids[j], float(s[j])) for j in order])
        return out

    def search(self, query, k, exclude=()):  # noqa: ANN001, ANN201
        return self.search_many(query[None, :], k, exclude)[0]

    def __len__(self) -> int:
        return len(self._items)
