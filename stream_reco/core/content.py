"""Content vectors: where an item sits in embedding space before anyone has interacted with it.

A worker without a trained model must still recommend, and a new item must be recommendable the moment
the catalog announces it. Both need a vector derived from what the catalog says about the item:

* **Feature hashing** (`ContentEncoder`). Each feature of an item (every prefix of its category path, its
  price band, each attribute value, each value of a multi-valued attribute) is hashed, with the settings'
  seed, into a random unit vector (`hashed_vector`: SHAKE-256 output turned into Gaussian coordinates).
  An item's vector is the weighted sum of its features' vectors, normalised. Random vectors in 64
  dimensions are nearly orthogonal, so items that share features (same leaf category, same brand) end up
  close and items that share nothing end up nearly orthogonal. The hash never involves Python's randomised
  `hash()`, so every worker and every run computes the same vector for the same item.

* **Projection into a trained space** (`FeatureProjector`). Once a model exists, hashed vectors live in
  the wrong space: they say nothing about where the trained vectors of the item's peers are. The
  projector therefore gives each feature the mean of the (unit) trained vectors of the items that carry
  it, the feature's *centroid*, and a new item gets the same weighted sum as above with centroids in
  place of hashed vectors. A new phone thus lands among the trained phones, pulled towards its brand's
  trained items. The centroid is deliberately not normalised: the mean of unit vectors is long when the
  feature's items agree (a leaf category) and short when they point everywhere (a root category or a
  price band shared by half the shop), so uninformative features pull little by themselves. It is
  shrunk by `CENTROID_PRIOR_COUNT` pseudo-items so a feature seen on a single item is not trusted as
  much as one seen on hundreds. We chose centroids over a least-squares map from content vectors to
  trained vectors because they need no fitting step, update incrementally as catalog messages arrive,
  cannot over-fit a rare feature into a wild direction, and are easy to explain ("placed among the
  other items of Phones / Acme"). Features never seen on a trained item contribute nothing; an item
  none of whose features is known gets no projection and falls back to its hashed content vector (a
  deterministic but uninformative direction).

Deeper category levels weigh more than shallower ones, so the leaf dominates, yet items of sibling
leaves still share their parents' vectors. A small identity term (hashed from the item id) makes items
with identical attributes distinct, so equally good items are ordered by hash, not alphabetically. A
projected item is placed not on its centroid but as far from it as a typical trained member of its
category (`FeatureProjector.project`), so new items are recommendable as much as, not more than, their
established peers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from stream_reco.core.events import CATEGORY_SEP, CatalogItem, attribute_values

#: weight of the top category level; each level below adds `CATEGORY_DEPTH_STEP`, so the leaf dominates
CATEGORY_TOP_WEIGHT = 1.0
CATEGORY_DEPTH_STEP = 0.5
#: weight of the price band (a cheap and an expensive item of the same leaf should still be close)
PRICE_BAND_WEIGHT = 0.5
#: total weight of all attributes, shared as 1/sqrt(n) each so many attributes do not drown the category
ATTRIBUTES_TOTAL_WEIGHT = 1.0
#: weight of the item's own hashed direction: breaks exact ties between otherwise identical items
IDENTITY_WEIGHT = 0.25
#: prices fall into bands of one factor of this base (2: 10-20, 20-40, ...); scale-free across currencies
PRICE_BAND_BASE = 2.0
#: pseudo-items with no direction added to every centroid's count (shrinks features seen on few items)
CENTROID_PRIOR_COUNT = 1.0
#: distinct shared feature vectors kept in memory (identity vectors are never cached: one per item)
FEATURE_CACHE_SIZE = 65_536
#: vectors shorter than this have no direction
MIN_NORM = 1e-12
#: prefix of every hashed message, so our feature hashes never coincide with another use of SHAKE-256
_HASH_PERSON = b"stream-reco"
_SEED_BYTES = 8
_UINT64_BYTES = 8
_UINT64_BITS = 64
_FLOAT_MANTISSA_BITS = 53
_UNIT_SCALE = 2.0**-_FLOAT_MANTISSA_BITS

Feature = tuple[str, float]


def price_band(price: float | None) -> str | None:
    """The item's price band name (`None` when the catalog gives no price)."""
    if price is None or not math.isfinite(price):
        return None
    if price <= 0:
        return "free"
    return str(math.floor(math.log(price, PRICE_BAND_BASE)))


def item_features(item: CatalogItem) -> tuple[Feature, ...]:
    """The shared (non-identity) features of an item with their weights, in a fixed order.

    Category features are full path prefixes ("cat:Home/Kitchen"), so a leaf called "Accessories" under
    Phones and under Cameras are different features. Attribute keys and values are case-folded; each value of
    a multi-valued attribute is a feature of its own, named as the same single value would be.
    """
    feats: list[Feature] = []
    for depth in range(len(item.category)):
        path = CATEGORY_SEP.join(item.category[: depth + 1])
        feats.append((f"cat:{path}", CATEGORY_TOP_WEIGHT + CATEGORY_DEPTH_STEP * depth))
    band = price_band(item.price)
    if band is not None:
        feats.append((f"price:{band}", PRICE_BAND_WEIGHT))
    if item.attributes:
        # an empty list says nothing, so it must not dilute the attributes that do have values
        keys = sorted(k for k, v in item.attributes.items() if v != ())
        weight = ATTRIBUTES_TOTAL_WEIGHT / math.sqrt(len(keys)) if keys else 0.0
        for key in keys:
            value = item.attributes[key]
            name = key.strip().casefold()
            if isinstance(value, str):  # exactly the features (and floats) of single values before lists existed
                feats.append((f"attr:{name}={value.strip().casefold()}", weight))
                continue
            # each value of a list is a feature spelled like a single value ("attr:genres=comedy"), so a film
            # tagged ["Comedy", "Drama"] shares a direction with one whose genre is just "Comedy"; the values
            # split the attribute's weight (1/sqrt(k) each) so a long tag list cannot drown the category; sorted
            # and de-duplicated after case-folding, so the order and repeats of a list do not matter
            values = sorted({attribute_key(v) for v in attribute_values(value)})
            share = weight / math.sqrt(len(values)) if len(values) > 1 else weight
            feats.extend((f"attr:{name}={v}", share) for v in values)
    return tuple(feats)


def attribute_key(value: str) -> str:
    """An attribute value as features compare it: trimmed and case-folded ("  Grey " and "grey" agree)."""
    return value.strip().casefold()


def hashed_vector(feature: str, dim: int, seed: int) -> np.ndarray:
    """A random unit vector determined only by (feature, dim, seed), the same on every machine.

    SHAKE-256 (an extendable-output hash) of the seed and the feature is read as uniform 53-bit numbers,
    turned into independent standard normals by the Box-Muller transform; the direction of a Gaussian
    vector is uniform on the sphere. This is several times cheaper than seeding a numpy generator per
    feature, which matters because every new item needs its own identity vector.
    """
    half = (dim + 1) // 2
    message = _HASH_PERSON + seed.to_bytes(_SEED_BYTES, "little", signed=True) + feature.encode("utf-8")
    raw = hashlib.shake_256(message).digest(2 * half * _UINT64_BYTES)
    u = (np.frombuffer(raw, dtype="<u8") >> np.uint64(_UINT64_BITS - _FLOAT_MANTISSA_BITS)) * _UNIT_SCALE
    radius = np.sqrt(-2.0 * np.log1p(-u[:half]))  # 1 - u is in (0, 1]: the log is finite
    angle = (2.0 * math.pi) * u[half:]
    v = np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))[:dim]
    out = normalise(v)
    if out is None:  # all radii zero: astronomically unlikely, but a vector must always come back
        out = np.zeros(dim, dtype=np.float32)
        out[0] = 1.0
    return out


@lru_cache(maxsize=FEATURE_CACHE_SIZE)
def _cached_feature_vector(feature: str, dim: int, seed: int) -> np.ndarray:
    v = hashed_vector(feature, dim, seed)
    v.flags.writeable = False  # shared between callers: nobody may change it in place
    return v


def normalise(v: np.ndarray) -> np.ndarray | None:
    """`v` scaled to unit length as float32, or None when it has no direction or is not finite."""
    v64 = np.asarray(v, dtype=np.float64)
    norm = math.sqrt(float(v64 @ v64)) if np.all(np.isfinite(v64)) else math.nan
    if not math.isfinite(norm) or norm < MIN_NORM:
        return None
    return (v64 / norm).astype(np.float32)


class ContentEncoder:
    """Deterministic content vectors from catalog attributes (see the module docstring)."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.seed = seed

    def feature_vector(self, feature: str) -> np.ndarray:
        """The hashed unit vector of a shared feature (cached, read-only)."""
        return _cached_feature_vector(feature, self.dim, self.seed)

    def identity_vector(self, item_id: str) -> np.ndarray:
        """The hashed unit vector of the item itself (not cached: there is one per item)."""
        return hashed_vector(f"id:{item_id}", self.dim, self.seed)

    def encode(self, item: CatalogItem, features: Sequence[Feature] | None = None) -> np.ndarray:
        """The unit float32 content vector of `item` (`features`: its `item_features`, if already known)."""
        feats = item_features(item) if features is None else features
        acc = IDENTITY_WEIGHT * self.identity_vector(item.item_id).astype(np.float64)
        for name, weight in feats:
            acc += weight * self.feature_vector(name)
        out = normalise(acc)
        # the identity term alone is a unit vector, so a sum can only vanish by exact cancellation
        return out if out is not None else self.identity_vector(item.item_id)

    def encode_many(self, items: Iterable[CatalogItem]) -> np.ndarray:
        """Content vectors of many items as one [n, dim] float32 matrix."""
        rows = [self.encode(item) for item in items]
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)


class FeatureProjector:
    """Places items without a trained vector among their trained peers, via per-feature centroids.

    The projector keeps, per shared feature, the sum and count of the trained (unit) vectors of the items
    that carry it. `add`/`remove` keep those sums current as catalog messages about trained items arrive
    or change; `project` combines the (unnormalised, shrunk) centroids of an item's features with the
    content weights.
    """

    def __init__(self, dim: int, encoder: ContentEncoder) -> None:
        self.dim = dim
        self._encoder = encoder
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, features: Sequence[Feature], vector: np.ndarray) -> list[str]:
        """Count a trained item's vector towards its features.

        Returns the features whose centroid changed materially: those whose count just reached a power
        of two (1, 2, 4, ...). Re-projecting items only then keeps the total work logarithmic in the
        number of trained items per feature while early estimates (from one or two items) get refined.
        """
        refined: list[str] = []
        vec = np.asarray(vector, dtype=np.float64)
        for name, _ in features:
            if name in self._sums:
                self._sums[name] += vec
                self._counts[name] += 1
            else:
                self._sums[name] = vec.copy()
                self._counts[name] = 1
            count = self._counts[name]
            if count & (count - 1) == 0:
                refined.append(name)
        return refined

    def remove(self, features: Sequence[Feature], vector: np.ndarray) -> None:
        """Undo `add` (a trained item's category or attributes changed, or it left the catalog)."""
        vec = np.asarray(vector, dtype=np.float64)
        for name, _ in features:
            count = self._counts.get(name, 0)
            if count <= 1:
                self._sums.pop(name, None)
                self._counts.pop(name, None)
            else:
                self._sums[name] -= vec
                self._counts[name] = count - 1

    def knows(self, feature: str) -> bool:
        return feature in self._sums

    def count(self, feature: str) -> int:
        return self._counts.get(feature, 0)

    def __len__(self) -> int:
        return len(self._sums)

    def project(self, item_id: str, features: Sequence[Feature]) -> np.ndarray | None:
        """The item's unit vector in the trained space, or None when none of its features is known.

        The direction `d` is the weighted sum of the item's feature centroids. The item is not put *on*
        `d`: a centroid is more typical than any real member, so a new item there would outrank every
        trained peer for any visitor interested in the category (the benchmark saw projected items take
        half of all top-20 slots), and all new items of a category would be duplicates. Instead it is
        placed where a typical member sits: at cosine `rho` from `d`, where `rho` is the coherence of its
        most coherent known feature (the length of the shrunk mean of unit vectors, which is the average
        cosine of the members to their mean direction), offset in the direction of its identity hash.
        """
        acc = np.zeros(self.dim, dtype=np.float64)
        rho = 0.0
        for name, weight in features:
            total = self._sums.get(name)
            if total is None:
                continue
            mean = total / (self._counts[name] + CENTROID_PRIOR_COUNT)
            acc += weight * mean
            rho = max(rho, math.sqrt(float(mean @ mean)))
        direction = normalise(acc)
        if direction is None:
            return None
        rho = min(rho, 1.0)
        identity = self._encoder.identity_vector(item_id).astype(np.float64)
        offset = normalise(identity - float(identity @ direction) * direction)
        if offset is None:  # the identity hash is parallel to d: nothing to offset along
            return direction
        return normalise(rho * direction + math.sqrt(1.0 - rho * rho) * offset)
