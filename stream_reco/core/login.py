"""The login join, implemented once: an anonymous session's state merged into its user's state.

Two callers, one rule. The core joins at once when a login event (`user_id` with the earlier `session_id`)
finds the session's state in its own store (`Recommender.observe`). A worker joins a session that lives on
another partition when its state arrives over the internal joins topic (stream/joins.py); that path also
remembers the join's id among the user's event ids, so a redelivered join state changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_reco.core.state import VisitorState
from stream_reco.settings import CoreSettings

if TYPE_CHECKING:
    from stream_reco.core.recommender import VisitorStore


def joinable(session: VisitorState | None) -> bool:
    """Whether a session's state may be joined into a user: it exists and is still anonymous."""
    return session is not None and session.user_id is None


def join(user: VisitorState | None, session: VisitorState, user_id: str, settings: CoreSettings,
         join_id: str | None = None) -> VisitorState | None:
    """`user` (a new state when None) with `session` merged in (`VisitorState.merge`), owned by `user_id`.

    `join_id` (a forwarded join): None, and nothing changed, when the user has already seen it; else it is
    remembered among the user's event ids, within the dedup window like any event id."""
    state = user if user is not None else VisitorState()
    if join_id is not None and state.has_seen_event(join_id):
        return None
    state.merge(session, settings)
    state.user_id = state.user_id or user_id
    if join_id is not None:
        state.event_ids.append(join_id)
        if len(state.event_ids) > settings.dedup_window:
            del state.event_ids[: len(state.event_ids) - settings.dedup_window]
    return state


def forget(store: VisitorStore, key: str) -> None:
    """Delete a joined session from `store`: a tombstone where the store can delete, else an empty state
    (which a later join takes for "nothing to join")."""
    delete = getattr(store, "delete", None)
    if callable(delete):
        delete(key)
    else:
        store.put(key, VisitorState())
