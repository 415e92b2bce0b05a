"""A visitor's interests: up to `max_interests` unit vectors in item space, each a decayed, weighted mean.

One averaged visitor vector lands *between* two interests, where neither ANN recall nor
relevance is good (annoy recall 0.998 on one-interest queries vs 0.906 on averaged two-interest ones,
stack-findings.md). So a visitor holds up to `max_interests` unit vectors, each the decayed, weighted
mean of the items that fell into its region of item space; an item unlike every interest opens a new
one, and when all slots are taken the two closest interests merge to make room.

Pure numpy on the vectors the caller passes in (`VisitorState.apply` and `merge` in `core/state.py`); how the
vectors are stored (float16 base64) is the state's business, the precision they are kept at (`quantised`) is
decided here so that a live object and one read back from bytes agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream_reco.settings import CoreSettings

#: milliseconds per hour (half-lives are set in hours)
MS_PER_HOUR = 3_600_000
#: an interest whose decayed weight falls below this is forgotten (about 10 half-lives of one view)
MIN_INTEREST_WEIGHT = 1e-3
#: vectors shorter than this are treated as "no direction" (unknown item, fully cancelled interest)
MIN_NORM = 1e-6


def decay_factor(dt_ms: float, half_life_ms: float) -> float:
    """Exponential decay over `dt_ms`; time running backwards (out-of-order events) never grows weights."""
    if dt_ms <= 0 or half_life_ms <= 0:
        return 1.0
    return float(0.5 ** (dt_ms / half_life_ms))


def unit(v: np.ndarray) -> np.ndarray | None:
    """`v` scaled to length 1 as float32, or None when it has no direction (too short, or not finite)."""
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or n < MIN_NORM:
        return None
    return (v / n).astype(np.float32)


def quantised(v: np.ndarray) -> np.ndarray:
    """`v` as float32 holding float16 values: the precision interest vectors are kept at (memory per
    visitor: a 64-d vector is 172 bytes of base64 instead of 344; cosines move by ~1e-3 at most)."""
    return np.asarray(v, dtype=np.float32).astype(np.float16).astype(np.float32)


@dataclass(slots=True)
class Interest:
    """One region of item space a visitor cares about: a unit centroid and a decayed weight."""

    vector: np.ndarray  # unit float32 [dim] holding float16 values (`quantised`)
    weight: float  # decayed weight as of `updated_at`
    updated_at: int  # ms, event time of the last change
    count: int = 1  # events that fed it (for tests, explanations and diagnostics)

    def weight_at(self, now_ms: int, half_life_ms: float) -> float:
        return self.weight * decay_factor(now_ms - self.updated_at, half_life_ms)

    def decay_to(self, now_ms: int, half_life_ms: float) -> None:
        if now_ms > self.updated_at:
            self.weight = self.weight_at(now_ms, half_life_ms)
            self.updated_at = now_ms

    def absorb(self, vector: np.ndarray, weight: float, count: int = 1) -> None:
        """Move the centroid towards `vector` in proportion to `weight` (the weighted running mean)."""
        total = self.weight + weight
        merged = unit(self.vector * self.weight + vector * weight)
        if merged is not None:
            self.vector = quantised(merged)
        self.weight = total
        self.count += count


def update_interests(
    interests: list[Interest],
    vector: np.ndarray,
    weight: float,
    timestamp: int,
    settings: CoreSettings,
) -> None:
    """Fold one item vector with a signed weight into the interest list, in place.

    Positive weight: join the most similar interest when it is similar enough
    (`interest_split_cosine`), else open a new interest; when `max_interests` are taken, first merge
    the two most similar interests if they are closer to each other than the item is to any of them,
    otherwise the item joins its nearest interest. Negative weight (a dismissal): push the nearest
    interest that points towards the item away from it, without adding weight.
    """
    half_life = settings.interest_half_life_h * MS_PER_HOUR
    for it in interests:
        it.decay_to(timestamp, half_life)
    interests[:] = [it for it in interests if it.weight >= MIN_INTEREST_WEIGHT]
    if weight == 0:
        return
    sims = np.array([float(it.vector @ vector) for it in interests], dtype=np.float64)
    best = int(np.argmax(sims)) if len(interests) else -1
    if weight < 0:
        if best >= 0 and sims[best] > 0:
            it = interests[best]
            pushed = unit(it.vector * it.weight + vector * weight * sims[best])
            if pushed is not None:
                it.vector = quantised(pushed)
            it.updated_at = max(it.updated_at, timestamp)
        return
    if best >= 0 and sims[best] >= settings.interest_split_cosine:
        interests[best].absorb(vector, weight)
        interests[best].updated_at = max(interests[best].updated_at, timestamp)
        return
    if len(interests) >= settings.max_interests:
        pair = _closest_pair(interests)
        if pair is not None and pair[2] > sims[best]:
            i, j, _ = pair
            keep, gone = interests[i], interests[j]
            keep.absorb(gone.vector, gone.weight, gone.count)
            del interests[j]
        else:
            interests[best].absorb(vector, weight)
            interests[best].updated_at = max(interests[best].updated_at, timestamp)
            return
    interests.append(Interest(vector=quantised(vector), weight=weight, updated_at=timestamp, count=1))


def _closest_pair(interests: list[Interest]) -> tuple[int, int, float] | None:
    """The two most similar interests (i < j) and their cosine; ties go to the lower indices."""
    if len(interests) < 2:
        return None
    m = np.stack([it.vector for it in interests])
    sim = m @ m.T
    np.fill_diagonal(sim, -np.inf)
    flat = int(np.argmax(sim))
    i, j = divmod(flat, len(interests))
    return min(i, j), max(i, j), float(sim[i, j])
