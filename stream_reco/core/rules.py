"""Business rules applied to candidate lists: small, composable, each configurable and tested alone.

A rule looks at a batch of candidates and returns one multiplier per candidate: 0 removes the item,
1 leaves it, anything else re-weights it (penalties < 1, boosts > 1); or None when it has nothing to do,
so inactive rules cost nothing. `apply_rules` multiplies the rules' answers together, so hard filters
always win over boosts and the order of the rules does not matter.

The hard rules (never out-of-stock/deleted/unknown, dismissed, or purchased-and-not-repurchasable items)
are part of every pipeline; the others follow the settings, and a caller can build any pipeline from
the classes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from stream_reco.core.events import CATEGORY_SEP, CatalogItem
from stream_reco.core.limits import category_key
from stream_reco.core.state import MS_PER_DAY, VisitorState
from stream_reco.settings import CoreSettings, SettingsError

if TYPE_CHECKING:
    from stream_reco.core.items import ItemCatalog


@dataclass(slots=True)
class RuleContext:
    """What a rule may look at besides the candidates themselves."""

    settings: CoreSettings
    catalog: ItemCatalog
    state: VisitorState
    now_ms: int
    page_category: str | None = None  # category path to scope the list to (None: no scoping)
    exclude_interacted: bool = False  # drop every item the visitor interacted with before
    category: str | None = None  # category path whose subtree alone may be listed (a category page)
    exclude: frozenset[str] = frozenset()  # never listed in this list (the page's item, the cart, the trigger)


@dataclass(slots=True)
class Batch:
    """Candidates under evaluation: ids and their catalogue records (None for unknown items)."""

    ids: Sequence[str]
    items: Sequence[CatalogItem | None]

    @classmethod
    def of(cls, ids: Sequence[str], catalog: ItemCatalog) -> Batch:
        get_many = getattr(catalog, "get_many", None)
        return cls(ids=ids, items=get_many(ids) if get_many is not None else [catalog.get(i) for i in ids])

    def __len__(self) -> int:
        return len(self.ids)


class Rule(Protocol):
    """One rule: multipliers per candidate (0 removes), or None when the rule does not apply."""

    name: str

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None: ...


def _mask(values: Sequence[bool]) -> np.ndarray:
    return np.fromiter(values, dtype=np.float64, count=len(values))


class Recommendable:
    """Never recommend items that are unknown, out of stock or deleted."""

    name = "recommendable"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        return _mask([it is not None and it.recommendable for it in batch.items])


class NotDismissed:
    """Never show an item the visitor dismissed again (also those older than `owned_cap`: the filter)."""

    name = "not_dismissed"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        state = ctx.state
        if state.owned_filter is not None:
            return _mask([not state.has_dismissed(i) for i in batch.ids])
        dismissed = state.dismissed
        if not dismissed:
            return None
        return _mask([i not in dismissed for i in batch.ids])


class NotPurchased:
    """Never show an item the visitor bought, unless the catalogue marks it repurchasable."""

    name = "not_purchased"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        state = ctx.state
        if state.owned_filter is not None:  # a heavy buyer: purchases older than `owned_cap` count too
            return _mask(
                [
                    (it is not None and it.repurchasable) or not state.has_purchased(i)
                    for i, it in zip(batch.ids, batch.items, strict=True)
                ]
            )
        bought = state.purchased
        if not bought:
            return None
        return _mask(
            [
                i not in bought or (it is not None and it.repurchasable)
                for i, it in zip(batch.ids, batch.items, strict=True)
            ]
        )


@dataclass(slots=True)
class SuppressPurchasedCategories:
    """Hide the (leaf) category of a recent purchase for `days`: who just bought a sofa needs no sofa."""

    days: float
    name: str = "suppress_purchased_categories"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        if self.days <= 0 or not ctx.state.purchase_categories:
            return None
        window = self.days * MS_PER_DAY
        hidden = {c for c, t in ctx.state.purchase_categories.items() if ctx.now_ms - t < window}
        if not hidden:
            return None
        # the state keeps bounded keys of category paths (limits.category_key), so compare keys
        return _mask([it is None or category_key(it.category_path) not in hidden for it in batch.items])


@dataclass(slots=True)
class ViewedPenalty:
    """Down-weight items already viewed in the current session (they stay possible, just lower)."""

    multiplier: float
    name: str = "viewed_penalty"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        if self.multiplier == 1.0:
            return None
        viewed = {h[0] for h in ctx.state.session_history(ctx.now_ms, ctx.settings)}
        if not viewed:
            return None
        return np.array([self.multiplier if i in viewed else 1.0 for i in batch.ids], dtype=np.float64)


class NotExcluded:
    """Never list the ids this list excludes: the caller's `exclude`, the product on the page, the cart's items and
    the item of the view that triggered the list (a shopper is never recommended what is on the page)."""

    name = "not_excluded"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        if not ctx.exclude:
            return None
        return _mask([i not in ctx.exclude for i in batch.ids])


def in_subtree(category_path: str, category: str) -> bool:
    """True when `category_path` is `category` or lies below it ("A/B" holds "A/B" and "A/B/C", not "A/BC")."""
    return category_path == category or category_path.startswith(category + CATEGORY_SEP)


@dataclass(slots=True)
class CategoryScope:
    """Keep only items in the subtree of the list's category (a category page lists nothing from elsewhere)."""

    name: str = "category_scope"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        if not ctx.category:
            return None
        return _mask([it is not None and in_subtree(it.category_path, ctx.category) for it in batch.items])


def in_scope(category_path: str, page_category: str) -> bool:
    """True when `category_path` lies under the page's category or one of its siblings.

    Siblings are the categories with the same parent; a top-level page scopes to its own subtree
    (every top-level category is its sibling, which would scope to nothing).
    """
    parent = page_category.rsplit(CATEGORY_SEP, 1)[0] if CATEGORY_SEP in page_category else page_category
    return category_path == parent or category_path.startswith(parent + CATEGORY_SEP)


@dataclass(slots=True)
class PageScope:
    """Keep only items in the page's category and its siblings (when a page category is known)."""

    name: str = "page_scope"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        page = ctx.page_category
        if not page:
            return None
        return _mask([it is not None and in_scope(it.category_path, page) for it in batch.items])


def parse_attribute_boosts(spec: str) -> tuple[tuple[str, str, float], ...]:
    """Parse "attr=value:mult,..." (e.g. "brand=Acme:1.2,colour=grey:0.8") into (attr, value, mult)."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            cond, mult = part.rsplit(":", 1)
            attr, value = cond.split("=", 1)
            factor = float(mult)
        except ValueError as exc:
            raise SettingsError(f"attribute_boosts: {part!r} is not attr=value:multiplier") from exc
        if not attr.strip() or factor < 0:
            raise SettingsError(f"attribute_boosts: {part!r} needs an attribute and a multiplier >= 0")
        out.append((attr.strip(), value.strip(), factor))
    return tuple(out)


@dataclass(slots=True)
class AttributeBoost:
    """Multiply the score of items whose attribute has a given value (several boosts multiply).

    A boost `genre=Comedy:1.5` also matches an item whose `genre` is a list containing "Comedy"; values are
    compared exactly (case and spaces count), for lists as for single values.
    """

    boosts: tuple[tuple[str, str, float], ...]
    name: str = "attribute_boost"

    @classmethod
    def from_spec(cls, spec: str) -> AttributeBoost:
        return cls(parse_attribute_boosts(spec))

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        if not self.boosts:
            return None
        out = np.ones(len(batch), dtype=np.float64)
        for n, it in enumerate(batch.items):
            if it is None or not it.attributes:
                continue
            for attr, value, factor in self.boosts:
                got = it.attributes.get(attr)
                # a multi-valued attribute (a tuple of its values) matches when any of its values is `value`
                if got == value or (isinstance(got, tuple) and value in got):
                    out[n] *= factor
        return out


class ExcludeInteracted:
    """Drop every item the visitor interacted with before (the evaluation's "novel targets" variant)."""

    name = "exclude_interacted"

    def __call__(self, ctx: RuleContext, batch: Batch) -> np.ndarray | None:
        if not ctx.exclude_interacted:
            return None
        s = ctx.state
        return _mask([i not in s.seen and not s.has_purchased(i) and not s.has_dismissed(i) for i in batch.ids])


def default_rules(settings: CoreSettings) -> list[Rule]:
    """The pipeline the settings ask for: hard filters always, the rest when configured."""
    rules: list[Rule] = [Recommendable(), NotDismissed(), NotPurchased(), ExcludeInteracted(), NotExcluded()]
    if settings.purchase_suppress_days > 0:
        rules.append(SuppressPurchasedCategories(settings.purchase_suppress_days))
    if settings.viewed_penalty != 1.0:
        rules.append(ViewedPenalty(settings.viewed_penalty))
    rules.append(PageScope())
    rules.append(CategoryScope())
    if settings.attribute_boosts.strip():
        rules.append(AttributeBoost.from_spec(settings.attribute_boosts))
    return rules


def apply_rules(rules: Sequence[Rule], ctx: RuleContext, batch: Batch) -> np.ndarray:
    """The product of every rule's multipliers (0 = removed), one per candidate."""
    out = np.ones(len(batch), dtype=np.float64)
    for rule in rules:
        m = rule(ctx, batch)
        if m is not None:
            out *= m
    return out


def excluded_ids(ctx: RuleContext) -> list[str]:
    """Items the hard rules would remove anyway, so candidate search need not spend slots on them."""
    s = ctx.state
    out = list(s.dismissed)
    for i in s.purchased:
        item = ctx.catalog.get(i)
        if i not in s.dismissed and not (item is not None and item.repurchasable):
            out.append(i)
    if ctx.exclude_interacted:
        taken = set(out)
        for i in [*s.purchased, *s.seen]:
            if i not in taken:
                taken.add(i)
                out.append(i)
    if ctx.exclude:
        taken = set(out)
        out.extend(sorted(i for i in ctx.exclude if i not in taken))  # sorted: the same search whatever set order
    return out
