"""Small deterministic shops for the core's unit tests: a catalogue with clustered vectors, and events.

Every leaf category is a tight cluster around its own random direction (seeded), so "views in one
category" mean "views in one region of item space", like trained embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.items import ItemCatalog
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


#: the search indexes the behavioural suite runs on. The shop is far below the measured exact/annoy
#: crossover, so "annoy" forces it: with `exact_index_max_items=0` every non-empty catalogue gets an
#: annoy snapshot when a model loads (`ItemCatalog.load_model`, `ItemCatalog.rebuild`)
EXACT, ANNOY = "exact", "annoy"
INDEX_KINDS = (EXACT, ANNOY)
FORCE_ANNOY = {"exact_index_max_items": 0}


def make_settings(index: str = EXACT, **overrides: object) -> Settings:
    """Default settings at the fixtures' vector dimension for the given index kind (plus any overrides)."""
    if index not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {index!r}")
    forced = FORCE_ANNOY if index == ANNOY else {}
    return Settings(embedding_dim=DIM).replace(**{**forced, **overrides})


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


def make_catalog(settings: Settings | None = None, artifact: ModelArtifact | None = None) -> ItemCatalog:
    """The real `ItemCatalog`, loaded with the fixture artifact and its items.

    An annoy snapshot is built before this returns (not in the background), so a test never races the
    build and runs on the index its settings ask for from the first query.
    """
    settings = settings or make_settings()
    catalog = ItemCatalog(settings)
    artifact = artifact or make_artifact()
    for it in artifact.catalog:
        catalog.upsert(it)
    catalog.load_model(artifact, background=False)
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

