"""Placements: where a list is shown, and what that changes in how its candidates are gathered.

The contract ("Placements") names four: `home` (the visitor's own list, the pushed one), `product` (items
related to one item, personalised), `cart` (complements of the cart's items) and `category` (the visitor's
list scoped to a category subtree). Only the candidates and their blend weights differ: every placement goes
through the same rules, scoring, widening, diversity and seen-in-session cap (core/recommender.py), so every
rule holds everywhere.

* **product**: the item's co-visited neighbours ("Often viewed with Oak coffee table") and its embedding
  neighbours ("Similar to Oak coffee table") lead; the visitor's own sources join at `PERSONAL_SHARE`, so an
  item both related and close to the visitor's session ranks first (personalised), and a visitor's own picks
  fill the list when the item has few relations (an item the catalogue or the statistics do not know yet).
* **cart**: co-visitation anchored on every cart item (complements: items looked at together with them);
  embedding neighbours are substitutes, not complements, so they are not gathered. No bought-together
  statistic exists yet: co-visitation counts views, carts and purchases, so reasons say "viewed with".
* **category**: the home list, with the category's best-sellers as seeds and a rule keeping only its subtree.

`product` and `cart` leave the recently-viewed source out: "You viewed this recently" is not related to the
item on the page (a recently viewed item that is related still comes through its relation).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stream_reco.core.candidates import (
    N_SOURCES,
    SOURCE_ANN,
    SOURCE_COVIS,
    SOURCE_POPULAR,
    SOURCE_RECENT,
    SOURCE_RELATED,
    SOURCE_SIMILAR,
    SOURCE_SKNN,
    CandidatePool,
)
from stream_reco.core.events import PLACEMENTS
from stream_reco.core.state import EVENT_CODES, VisitorState
from stream_reco.core.stats import CoVisitation
from stream_reco.settings import CoreSettings

if TYPE_CHECKING:
    from stream_reco.core.items import ItemCatalog

HOME, PRODUCT, CART, CATEGORY = PLACEMENTS
#: placements that offer the visitor's own recent items again (the recently-viewed source)
OWN_ITEMS_PLACEMENTS = frozenset({HOME, CATEGORY})
#: weight of the visitor's own sources next to the item's relations in `product` and `cart` lists: enough to
#: order related items by the visitor's taste and to fill a list the relations leave short, too little for an
#: unrelated personal pick to outrank a related item
PERSONAL_SHARE = 0.3
#: blend weight of co-visitation anchored on the page's item(s) (the strongest related signal)
RELATED_WEIGHT = 1.0
#: blend weight of the product's embedding neighbours (what carries items nobody co-viewed yet)
SIMILAR_WEIGHT = 0.5
#: event codes of the stored history that put an item in a cart or take it out
ADD_TO_CART_CODE, PURCHASE_CODE = EVENT_CODES["add_to_cart"], EVENT_CODES["purchase"]


@dataclass(frozen=True, slots=True)
class Context:
    """One list's placement, checked: the items it is anchored on, its category scope and what it never shows."""

    placement: str = HOME
    anchors: tuple[str, ...] = ()  # product: the item; cart: the cart's items
    category: str | None = None  # category: the subtree path
    exclude: frozenset[str] = frozenset()  # never listed: the `exclude` ids, the product, the cart, the trigger


def resolve(
    placement: str,
    state: VisitorState,
    now_ms: int,
    settings: CoreSettings,
    *,
    item: str | None = None,
    cart: Sequence[str] = (),
    category: str | None = None,
    exclude: Sequence[str] = (),
) -> Context:
    """The checked context of one list; ValueError (with a message an HTTP client can act on) when it cannot be
    served: an unknown placement, a missing required argument, or an argument the placement does not take.

    A `cart` placement without `cart` items uses the visitor's own cart (`visitor_cart`).
    """
    cart = (cart,) if isinstance(cart, str) else tuple(cart)  # one id, not its characters
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {str(placement)[:40]!r}: use one of {', '.join(PLACEMENTS)}")
    if item is not None and placement != PRODUCT:
        raise ValueError(f"item goes with placement 'product', not {placement!r} (a cart's items go in cart)")
    if cart and placement != CART:
        raise ValueError(f"cart goes with placement 'cart', not {placement!r}")
    if category is not None and placement != CATEGORY:
        raise ValueError(f"category goes with placement 'category', not {placement!r}")
    if placement == PRODUCT and not item:
        raise ValueError("placement 'product' needs the item on the page (item=ID)")
    if placement == CATEGORY and not (category and category.strip("/")):
        raise ValueError("placement 'category' needs a category path (e.g. 'Furniture/Living room')")
    if placement == PRODUCT:
        anchors: tuple[str, ...] = (str(item),)
    elif placement == CART:
        anchors = tuple(dict.fromkeys(cart)) or tuple(visitor_cart(state, now_ms, settings))
    else:
        anchors = ()
    scope = str(category).strip("/") if placement == CATEGORY else None
    return Context(placement, anchors, scope, frozenset(exclude) | frozenset(anchors))


def visitor_cart(state: VisitorState, now_ms: int, settings: CoreSettings) -> list[str]:
    """Items added to the cart in the current session and not purchased since, in the order they were added."""
    cart: dict[str, None] = {}
    for item_id, _, code in state.session_history(now_ms, settings):
        if code == ADD_TO_CART_CODE:
            cart[item_id] = None
        elif code == PURCHASE_CODE:
            cart.pop(item_id, None)
    return list(cart)


def weights(placement: str, settings: CoreSettings) -> np.ndarray | None:
    """Blend weight per source (`candidates.N_SOURCES`) for a placement; None (the settings' weights) for the
    placements without relations (`home`, `category`)."""
    if placement not in (PRODUCT, CART):
        return None
    w = np.zeros(N_SOURCES, dtype=np.float64)
    w[SOURCE_ANN], w[SOURCE_COVIS], w[SOURCE_SKNN] = settings.weight_ann, settings.weight_covis, settings.weight_sknn
    w[SOURCE_POPULAR] = settings.weight_popular
    w = np.maximum(w, 0.0) * PERSONAL_SHARE
    w[SOURCE_RECENT] = 0.0
    w[SOURCE_RELATED] = RELATED_WEIGHT
    w[SOURCE_SIMILAR] = SIMILAR_WEIGHT if placement == PRODUCT else 0.0
    return w


def anchored_candidates(
    pool: CandidatePool,
    context: Context,
    covis: CoVisitation,
    catalog: ItemCatalog,
    n: int,
    exclude: Sequence[str],
) -> None:
    """The page's relations: items co-visited with the anchors and, on a product page, the item's embedding
    neighbours, each remembering the anchor behind it (the reason names it)."""
    if not context.anchors:
        return
    scores: dict[str, float] = {}
    strongest: dict[str, tuple[float, str]] = {}  # item -> (weight, anchor) of its strongest co-visit
    for anchor in context.anchors:
        neighbours = covis.neighbours(anchor)
        top = max(neighbours.values(), default=0.0)
        if top <= 0:
            continue
        for item, w in neighbours.items():
            w /= top  # each cart item counts the same, however often it is viewed: a cart has no order
            scores[item] = scores.get(item, 0.0) + w
            if item not in strongest or w > strongest[item][0]:
                strongest[item] = (w, anchor)
    for item, s in heapq.nsmallest(n, scores.items(), key=lambda kv: (-kv[1], kv[0])):
        pool._add(item)
        pool.related[item] = s
        pool.related_anchor[item] = strongest[item][1]
    if context.placement == PRODUCT:
        anchor = context.anchors[0]
        vector = catalog.vector(anchor)  # None for an item neither the model nor the catalogue knows
        for item, sim in catalog.search(vector, n, exclude=exclude) if vector is not None else ():
            if sim > 0:
                pool._add(item)
                pool.similar[item] = float(sim)
                pool.similar_anchor[item] = anchor
