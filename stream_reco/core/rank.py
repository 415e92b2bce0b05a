"""Final ordering: stable sorting and MMR diversity re-ranking.

Maximal Marginal Relevance picks, one slot at a time, the candidate with the best
``lambda * relevance - (1 - lambda) * (highest cosine to an already picked item)``, so a list is not five
near-identical items. It is vectorised: each step is one matrix-vector product over the pool, and the
pool is small (a few times the list size), so a list costs a few tens of microseconds.

Every ordering here breaks ties by item id, so the same inputs always give the same list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: vectors shorter than this count as "no vector" (unknown items): they are similar to nothing
MIN_NORM = 1e-6


def stable_order(ids: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Indices sorting by score, best first, ties by item id (ascending)."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[np.argsort(np.asarray(ids, dtype=object), kind="stable")] = np.arange(len(ids))
    return np.lexsort((id_rank, -np.asarray(scores, dtype=np.float64)))


def mmr(
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lam: float,
    keep: int = 0,
    groups: np.ndarray | None = None,
    max_per_group: int = 0,
    capped_slots: int | None = None,
    limited: np.ndarray | None = None,
    max_limited: int = 0,
) -> np.ndarray:
    """Indices of `k` picks by MMR; `scores` must already be in canonical order (see `stable_order`).

    Relevance is the score scaled to [0, 1] by the pool's best; similarity is cosine (rows of `vectors`
    need not be unit, zero rows are similar to nothing). Ties go to the lower index, i.e. to the better
    score and then the smaller id, because the pool arrives in canonical order. `lam` = 1 is a plain
    top-k by score. The first `keep` slots go by relevance alone (the best few stay on top); MMR then
    diversifies the rest against everything picked so far, with relevance rescaled by the best of the
    rest (so a few very strong kept items do not shrink the others' relevance next to the similarity).

    `groups` (one int per candidate, the leaf category; negative: a group of its own) with
    `max_per_group` > 0 is a hard cap on top of the soft trade-off: MMR alone lets five items of one
    category through whenever they dominate the relevance (cosine between them is high, but so is their
    relevance against everything else). A full group's other members wait until no candidate of another
    group is left, so the cap never shortens a list (the caller makes the pool wide enough to honour it).
    `capped_slots` (default: all) limits the cap to the first slots, the list a shopper sees; a longer
    list goes on as plain MMR after them.

    `limited` (one bool per candidate; the items seen in the session) caps how many of them the capped slots
    hold: at most `max_limited` (0: none while other candidates remain). It works like a group cap, and
    outranks the category cap when the two cannot both hold: the category cap is relaxed first, then this one,
    so neither ever shortens a list.
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    capped = groups is not None and max_per_group > 0
    limit = None if limited is None else np.asarray(limited, dtype=bool)
    if (lam >= 1.0 or n == 1 or keep >= k) and not capped and limit is None:
        return np.arange(k)
    rel = np.asarray(scores, dtype=np.float64)
    top = float(rel.max())
    rel = rel / top if top > 0 else rel
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1)
    unit = np.where(norms[:, None] > MIN_NORM, v / np.maximum(norms, MIN_NORM)[:, None], 0.0).astype(np.float32)
    max_sim = np.zeros(n, dtype=np.float64)
    picked = np.zeros(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    blocked = np.zeros(n, dtype=bool)  # members of full groups
    group_of = np.asarray(groups, dtype=np.int64) if capped else None
    counts: dict[int, int] = {}
    n_limited = 0
    for step in range(k):
        if step < keep or lam >= 1.0:
            gain = rel.copy()
        else:
            if step == keep and keep > 0:
                rest = float(rel[~picked].max())
                rel = rel / rest if rest > 0 else rel
            gain = lam * rel - (1.0 - lam) * max_sim
        gain[picked] = -np.inf
        if capped_slots is None or step < capped_slots:
            _block(gain, picked, blocked if capped else None,
                   limit if limit is not None and n_limited >= max_limited else None)
        best = int(np.argmax(gain))
        order[step] = best
        picked[best] = True
        np.maximum(max_sim, unit @ unit[best], out=max_sim)
        if limit is not None and limit[best]:
            n_limited += 1
        if group_of is not None and group_of[best] >= 0:
            g = int(group_of[best])
            counts[g] = counts.get(g, 0) + 1
            if counts[g] >= max_per_group:
                blocked |= group_of == g
    return order


def _block(gain: np.ndarray, picked: np.ndarray, full_groups: np.ndarray | None, limited: np.ndarray | None) -> None:
    """Take the candidates a cap blocks out of this step (`gain` to -inf), both caps when something is left
    after both, else only the seen cap (`limited`), else only the group cap: a cap never empties a step."""
    for mask in (_either(full_groups, limited), limited, full_groups):
        if mask is not None and not (mask | picked).all():
            gain[mask] = -np.inf
            return


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return b if a is None else a
    return a | b
