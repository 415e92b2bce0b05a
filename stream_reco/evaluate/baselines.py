"""POP, RPOP, COVIS and SKNN of docs/evaluation.md, behind the one interface every evaluated method has
(V-SKNN, STAN and VSTAN, which extend SKNN, are in `session_knn.py`).

    fit(train_records)                      learn the training part (default: `learn` each record)
    recommend(visitor, now_ms, k, exclude)  top-k item ids for the visitor at time now_ms, without `exclude`
    learn(record)                           take one more event into account (test-then-learn)

Definitions (evaluation.md): POP = global counts; RPOP = counts with exponential decay; COVIS = item-to-item
co-visitation within each visitor's last 10 events, scored from the visitor's last 5 distinct items weighted
1/(r+1), filled with RPOP; SKNN = session-kNN (sessions split at 30 min of inactivity, or the given session;
1000 most recent sessions sharing an item; cosine on item sets; k = 100), filled with RPOP.

Details the definitions leave open were settled by reproducing the reference table (JD and Diginetica,
both variants, to within .001-.002; see tests/unit/test_baselines.py for the hand-made cases):
- every event counts once whatever its type (the baselines are type-blind); non-target kinds are learned
  like any other;
- COVIS is directional: an event on B counts "A then B" for every distinct A among the visitor's previous
  10 events, so A's neighbours are what visitors went on to after A. A symmetric count (`symmetric=True`)
  scores higher HR@20 (JD all .309, Diginetica all .232) but does not reproduce the reference;
- ties are broken by RPOP score, then by first appearance of the item, so every baseline is deterministic.
Scores live in dense numpy arrays indexed by an item's first-seen order, which keeps POP/RPOP top-k at one
vectorised partial sort per request.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol, runtime_checkable

import numpy as np

from stream_reco.evaluate.loaders import LogRecord

MS_PER_HOUR = 3_600_000
# RPOP keeps scores as 2^((t - t_ref)/half_life); re-based before the exponent can overflow float64
_MAX_EXPONENT = 500.0
_INITIAL_CAPACITY = 1024

COVIS_WINDOW = 10
COVIS_HISTORY = 5
SKNN_GAP_MS = 30 * 60 * 1000
SKNN_SAMPLE = 1000
SKNN_K = 100


@runtime_checkable
class Method(Protocol):
    """What the prequential protocol needs from a method (ours and every baseline)."""

    name: str

    def fit(self, records: Sequence[LogRecord]) -> None: ...

    def recommend(
        self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None
    ) -> list[str]: ...

    def learn(self, record: LogRecord) -> None: ...


class ItemIndex:
    """String item ids mapped once to dense ints in first-seen order (the deterministic tie-break)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, item_id: str) -> int:
        idx = self.index.get(item_id)
        if idx is None:
            idx = len(self.ids)
            self.index[item_id] = idx
            self.ids.append(item_id)
        return idx

    def indices(self, item_ids: Iterable[str]) -> set[int]:
        return {self.index[i] for i in item_ids if i in self.index}


def top_indices(
    scores: np.ndarray, k: int, exclude: AbstractSet[int] = frozenset(), tie: np.ndarray | None = None
) -> list[int]:
    """Indices of the k highest positive scores, skipping `exclude`; ties by higher `tie`, then lower index.

    A partial sort finds the score threshold of the (k + |exclude|)-th item; everything at or above it is
    then fully ordered, so ties at the threshold are resolved deterministically too.
    """
    n = int(scores.shape[0])
    want = min(n, k + len(exclude))
    if want <= 0:
        return []
    if want < n:
        part = np.argpartition(-scores, want - 1)[:want]
        threshold = scores[part].min()
        cand = np.flatnonzero(scores >= threshold)
    else:
        cand = np.arange(n)
    cand = cand[scores[cand] > 0]
    keys = (cand, -tie[cand], -scores[cand]) if tie is not None else (cand, -scores[cand])
    order = cand[np.lexsort(keys)]
    out: list[int] = []
    for idx in order.tolist():
        if idx not in exclude:
            out.append(idx)
            if len(out) == k:
                break
    return out


class _Scores:
    """A growable float64 vector of per-item scores."""

    def __init__(self) -> None:
        self.values = np.zeros(_INITIAL_CAPACITY)
        self.size = 0

    def ensure(self, size: int) -> None:
        if size > self.values.shape[0]:
            grown = np.zeros(max(size, 2 * self.values.shape[0]))
            grown[: self.size] = self.values[: self.size]
            self.values = grown
        self.size = max(self.size, size)

    @property
    def view(self) -> np.ndarray:
        return self.values[: self.size]


class Baseline:
    """Shared plumbing: item index, `fit` as learning every record in order."""

    name = "baseline"

    def __init__(self) -> None:
        self.items = ItemIndex()

    def fit(self, records: Sequence[LogRecord]) -> None:
        for record in records:
            self.learn(record)

    def learn(self, record: LogRecord) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def recommend(
        self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None
    ) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ids(self, indices: Iterable[int]) -> list[str]:
        ids = self.items.ids
        return [ids[i] for i in indices]




class RecentPop(Baseline):
    """Popularity with exponential decay: an event of age a counts 2^(-a / half_life).

    Scores are stored relative to a reference time (an event adds 2^((t - t_ref)/h)), so learning is O(1) and
    the common decay factor, which does not change the order, is never applied; the store is re-based when
    the exponent grows large.
    """

    name = "RPOP"

    def __init__(self, half_life_h: float = 24.0) -> None:
        super().__init__()
        if half_life_h <= 0:
            raise ValueError("half_life_h must be > 0")
        self.half_life_ms = half_life_h * MS_PER_HOUR
        self.scores = _Scores()
        self.t_ref: int | None = None

    def learn(self, record: LogRecord) -> None:
        t = record.event.timestamp
        if self.t_ref is None:
            self.t_ref = t
        exponent = (t - self.t_ref) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            self.scores.view[:] *= 2.0 ** (-exponent)
            self.t_ref = t
            exponent = 0.0
        idx = self.items.add(record.event.item_id)
        self.scores.ensure(idx + 1)
        self.scores.values[idx] += 2.0**exponent

    def ranked(self, k: int, excluded: AbstractSet[int]) -> list[int]:
        return top_indices(self.scores.view, k, excluded)

    def decayed(self, now_ms: int) -> dict[str, float]:
        """Every item's decayed count at `now_ms` (what an RPOP prior at that time would store)."""
        if self.t_ref is None:
            return {}
        factor = 2.0 ** (-(now_ms - self.t_ref) / self.half_life_ms)
        return {i: float(s) * factor for i, s in zip(self.items.ids, self.scores.view.tolist(), strict=True)}

    def recommend(self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None) -> list[str]:
        return self._ids(self.ranked(k, self.items.indices(exclude or ())))


class Pop(Baseline):
    """Global popularity: how many events each item has had so far (ties by recent popularity)."""

    name = "POP"

    def __init__(self, half_life_h: float = 24.0) -> None:
        super().__init__()
        self.counts = _Scores()
        self.rpop = RecentPop(half_life_h)
        self.rpop.items = self.items

    def learn(self, record: LogRecord) -> None:
        self.rpop.learn(record)
        idx = self.items.index[record.event.item_id]
        self.counts.ensure(idx + 1)
        self.counts.values[idx] += 1.0

    def recommend(self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None) -> list[str]:
        excluded = self.items.indices(exclude or ())
        return self._ids(top_indices(self.counts.view, k, excluded, tie=self.rpop.scores.view))


class _FilledWithRpop(Baseline):
    """A neighbourhood method whose list is completed from RPOP (which shares its item index)."""

    def __init__(self, half_life_h: float) -> None:
        super().__init__()
        self.rpop = RecentPop(half_life_h)
        self.rpop.items = self.items

    def _fill(self, scored: dict[int, float], k: int, excluded: set[int]) -> list[str]:
        recent = self.rpop.scores.view
        ranked = sorted((i for i in scored if i not in excluded), key=lambda i: (-scored[i], -recent[i], i))[:k]
        if len(ranked) < k:
            taken = excluded | set(ranked)
            ranked += self.rpop.ranked(k - len(ranked), taken)
        return self._ids(ranked)


class Covis(_FilledWithRpop):
    """Item-to-item co-visitation within each visitor's last `window` events (directional by default)."""

    name = "COVIS"

    def __init__(
        self,
        half_life_h: float = 24.0,
        window: int = COVIS_WINDOW,
        history: int = COVIS_HISTORY,
        symmetric: bool = False,
    ) -> None:
        super().__init__(half_life_h)
        self.window = window
        self.history = history
        self.symmetric = symmetric
        self.recent: dict[str, deque[int]] = {}
        self.pairs: defaultdict[int, defaultdict[int, float]] = defaultdict(lambda: defaultdict(float))

    def learn(self, record: LogRecord) -> None:
        self.rpop.learn(record)
        event = record.event
        item = self.items.add(event.item_id)
        recent = self.recent.get(event.visitor_key)
        if recent is None:
            recent = self.recent[event.visitor_key] = deque(maxlen=self.window)
        row = self.pairs[item]
        for other in set(recent):
            if other != item:
                self.pairs[other][item] += 1.0
                if self.symmetric:
                    row[other] += 1.0
        recent.append(item)

    def last_distinct(self, visitor: str) -> list[int]:
        """The visitor's last `history` distinct items, most recent first."""
        out: list[int] = []
        for item in reversed(self.recent.get(visitor, ())):
            if item not in out:
                out.append(item)
                if len(out) == self.history:
                    break
        return out

    def recommend(self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None) -> list[str]:
        scored: dict[int, float] = defaultdict(float)
        for r, item in enumerate(self.last_distinct(visitor)):
            weight = 1.0 / (r + 1)
            for other, count in self.pairs.get(item, {}).items():
                scored[other] += weight * count
        return self._fill(scored, k, self.items.indices(exclude or ()))


class SessionKnn(_FilledWithRpop):
    """Session-based kNN: items of the sessions most similar (cosine on item sets) to the current one."""

    name = "SKNN"

    def __init__(
        self, half_life_h: float = 24.0, gap_ms: int = SKNN_GAP_MS, sample: int = SKNN_SAMPLE, k: int = SKNN_K
    ) -> None:
        super().__init__(half_life_h)
        self.gap_ms = gap_ms
        self.sample = sample
        self.k = k
        self.session_items: list[set[int]] = []
        self.session_last: list[int] = []
        self.item_sessions: defaultdict[int, list[int]] = defaultdict(list)
        self.current: dict[str, int] = {}  # visitor -> its current session
        self.given: dict[str, int] = {}  # given session id -> session
        self.given_sessions: set[int] = set()  # sessions that end only with their id, never by a gap

    def _session_for(self, visitor: str, session_id: str | None, user_id: str | None, t: int) -> int:
        if session_id is not None and user_id is None:
            sid = self.given.get(session_id)
            if sid is None:
                sid = self.given[session_id] = self._new_session()
                self.given_sessions.add(sid)
        else:
            sid = self.current.get(visitor, -1)
            if sid < 0 or t - self.session_last[sid] > self.gap_ms:
                sid = self._new_session()
        self.current[visitor] = sid
        return sid

    def _new_session(self) -> int:
        self.session_items.append(set())
        self.session_last.append(0)
        return len(self.session_items) - 1

    def learn(self, record: LogRecord) -> None:
        self.rpop.learn(record)
        event = record.event
        item = self.items.add(event.item_id)
        sid = self._session_for(event.visitor_key, event.session_id, event.user_id, event.timestamp)
        items = self.session_items[sid]
        if item not in items:
            items.add(item)
            self.item_sessions[item].append(sid)
        self.session_last[sid] = event.timestamp

    def _query(self, visitor: str, now_ms: int) -> tuple[int, set[int]]:
        sid = self.current.get(visitor, -1)
        if sid < 0:
            return -1, set()
        ended = sid not in self.given_sessions and now_ms - self.session_last[sid] > self.gap_ms
        return (-1, set()) if ended else (sid, self.session_items[sid])

    def recommend(self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None) -> list[str]:
        sid, items = self._query(visitor, now_ms)
        scored: dict[int, float] = defaultdict(float)
        if items:
            overlap: dict[int, int] = defaultdict(int)
            for item in items:
                for other in self.item_sessions.get(item, ())[-self.sample :]:
                    if other != sid:
                        overlap[other] += 1
            candidates = list(overlap)
            if len(candidates) > self.sample:
                last = self.session_last
                candidates = sorted(candidates, key=lambda s: (-last[s], s))[: self.sample]
            norm = math.sqrt(len(items))
            sims = sorted(
                ((overlap[s] / (norm * math.sqrt(len(self.session_items[s]))), s) for s in candidates),
                key=lambda p: (-p[0], p[1]),
            )[: self.k]
            for sim, s in sims:
                for other in self.session_items[s]:
                    scored[other] += sim
        return self._fill(scored, k, self.items.indices(exclude or ()))


def make_baselines(rpop_half_life_h: float) -> list[Baseline]:
    """Fresh POP, RPOP, COVIS and SKNN, with the dataset's RPOP half-life (also used for their fill)."""
    return [
        Pop(rpop_half_life_h),
        RecentPop(rpop_half_life_h),
        Covis(rpop_half_life_h),
        SessionKnn(rpop_half_life_h),
    ]
